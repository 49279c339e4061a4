"""Paths -> CellResults (core/results.py), and their CSV: path, predicted class, confidence, per-class
probabilities (or an error).

Imports torch, numpy and Pillow only (no sklearn, matplotlib or timm), so classifying one cell
waits little longer than torch's own import.
"""
from __future__ import annotations

import csv
import glob
import sys
from pathlib import Path

from ..cells.preprocess import from_meta
from ..core.imageio import is_candidate
from ..core.results import CellResult
from ..data.cache import decode_images
from .runner import run_model


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (searched recursively) and globs -> (image paths, skipped (path, reason))."""
    from ..data.scan import walk_files

    paths, skipped = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files, odd = walk_files(p)  # symlink loops and broken links are named, like hidden files
            skipped += odd
            for f in files:
                (paths.append(str(f)) if is_candidate(f) else
                 skipped.append((str(f), "hidden file, skipped" if f.name.startswith(".") else
                                 f"not an image extension ({f.suffix or 'none'}), skipped")))
        elif p.is_file():
            paths.append(str(p))  # named explicitly: try it whatever its extension
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                skipped.append((item, "no such file, folder or glob match"))
            paths.extend(m for m in matches if Path(m).is_file() and is_candidate(Path(m)))
    return paths, skipped


def predict_cells(model, meta, paths: list[str], batch_size: int = 64, workers: int | None = None,
                  min_confidence: float = 0.0, backend=None, progress: bool = True, tta: bool = False,
                  shift_check: bool = True) -> list[CellResult]:
    """One CellResult per path, in input order. Unreadable files get `error` and no class. A cell
    that is unfamiliar (unlike the training labs' cells) or below `min_confidence` is `refer`red; a
    warning is printed when a large share of the batch is unfamiliar."""
    classes = list(meta.classes)
    decoded = decode_images(paths, from_meta(meta), workers, "decoding", progress)
    pred = run_model(model, meta, decoded.images, batch_size, backend=backend, tta=tta, shift_check=shift_check)
    referred = pred.referred(min_confidence)
    results: list = [None] * len(paths)
    for i, reason in decoded.errors_by_position(len(paths)).items():
        results[i] = CellResult(paths[i], error=reason)
    for j, (i, found) in enumerate(zip(decoded.index, decoded.found)):
        results[i] = CellResult.from_predictions(paths[i], pred, j, referred, classes, cell_found=found)
    warn_if_unfamiliar(pred.unfamiliar, meta)
    return results


def predict_paths(model, meta, paths: list[str], *args, **kw) -> list[dict]:
    """predict_cells (same arguments) as the rows of the predictions CSV, for write_rows."""
    return [c.to_row(meta.classes, "predict") for c in predict_cells(model, meta, paths, *args, **kw)]


def warn_if_unfamiliar(unfamiliar, meta) -> str | None:
    """One warning line on stderr when a batch is largely unlike the training labs; returns it."""
    from ..models.shift import unfamiliar_warning

    text = unfamiliar_warning(unfamiliar, [s.get("name", "?") for s in meta.sources])
    if text is None:
        return None
    print(f"warning: {text}", file=sys.stderr)
    return text


def write_rows(rows: list[dict], classes: list[str], out) -> None:
    """The predictions CSV. `cell_found` is "no" where the model's cell crop found no cell and
    the whole picture was classified instead; `shift_score`/`unfamiliar` where the checkpoint
    carries the unfamiliar-image check. A file is written under a temporary name beside `out` and
    renamed over it once every row is in: a full disk or an interrupt leaves an earlier file as
    it was, never a partial one that looks whole."""
    from ..core.errors import WbcnetError
    from ..core.files import atomic_write, disk_full

    fields = (["path", "predicted", "confidence"] + [f"p_{c}" for c in classes] + ["cell_found"] +
              (["shift_score", "unfamiliar"] if any("unfamiliar" in r for r in rows) else []) + ["error"])

    def write(fh) -> None:
        w = csv.DictWriter(fh, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)

    if out in (None, "-"):
        write(sys.stdout)
        return
    if Path(out).exists() and not Path(out).is_file():  # /dev/stdout, a named pipe: nothing to replace
        with open(out, "w", newline="") as fh:
            write(fh)
        return
    try:
        with atomic_write(out) as tmp, open(tmp, "w", newline="") as fh:
            write(fh)
    except OSError as e:
        if not disk_full(e):
            raise
        kept = "the earlier file is unchanged" if Path(out).exists() else "nothing was written"
        raise WbcnetError(f"{out}: no space left on the device for the predictions CSV ({kept}); free some "
                          f"space and run again") from None
