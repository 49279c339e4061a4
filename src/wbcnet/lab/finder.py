"""Teach the finder one lab's fields: `wbcnet finder adapt` and the page's "teach the finder".

A lab corrects a handful of its fields: every white cell in a corrected field is a point
(`file,x,y,kind` with kind `wbc`), and whatever else the finder found there is wrong by
omission, or said so with a `not` point (a click that removed a false find, or a suggested cell
labelled "X: not a white cell"). A field checked and found to hold no white cell is one row
with empty x and y (kind `none`). A corrected field is then a fully labelled field: its white
cells are positives and everything else, red cells, platelets and stain included, negatives.

The shipped finder (or the one given) is fine-tuned on canvases cut from those fields, degraded
as in training (training/finder.py), for a few hundred steps; its settings and its reading of scale
are kept. A point's cell radius is the radius of the finder's own find under it, or the median
of the lab's finds, or 0.8 red-cell diameters (white cells are ~1.6 red cells across).

The result is a lab model: a folder with the classifier's checkpoint (best.safetensors/.json,
copied) and the lab's finder beside it (finder.safetensors/.json), which `count --checkpoint`
uses for finding (count.lab_finder).
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np

from ..core.errors import WbcnetError
from ..core.imageio import ImageReadError, load_rgb
from ..data.fields import Source

POINT_KINDS = ("wbc", "not", "none")


def read_points(path) -> dict[str, list[tuple[float, float, str]]]:
    """file name -> [(x, y, kind)] from a CSV `file,x,y,kind` (kind: wbc or not; a row with empty x
    and y marks a field with no white cell, and adds no point)."""
    path = Path(path)
    out: dict[str, list] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"file", "x", "y"} <= set(reader.fieldnames):
                raise WbcnetError(f"{path}: a points file needs the columns file,x,y[,kind] "
                                  f"(found {', '.join(reader.fieldnames or []) or 'none'})")
            for line, row in enumerate(reader, start=2):
                kind = (row.get("kind") or "wbc").strip().lower()
                if kind not in POINT_KINDS:
                    raise WbcnetError(f"{path}, line {line}: kind {kind!r} is not one of {', '.join(POINT_KINDS)}")
                marks = out.setdefault(Path(row["file"]).name, [])
                if not (row["x"] or "").strip() and not (row["y"] or "").strip():
                    continue  # checked: no white cell in this field
                if kind == "none":
                    raise WbcnetError(f"{path}, line {line}: kind none goes with empty x and y (a field with no "
                                      f"white cell)")
                try:
                    x, y = float(row["x"]), float(row["y"])
                except (TypeError, ValueError):
                    raise WbcnetError(f"{path}, line {line}: x and y must be numbers") from None
                marks.append((x, y, kind))
    except OSError as e:
        raise WbcnetError(f"{path}: cannot read the points file ({e.strerror or e})") from None
    if not any(kind == "wbc" for marks in out.values() for *_, kind in marks):
        raise WbcnetError(f"{path}: no white cell marked in it; mark the white cells of a few fields first")
    return out


def taught_fields(fields_dir, points: dict, finder, lab: str = "lab") -> Source:
    """The corrected fields as a training source: each field's white-cell points with a radius,
    and its red cells' size as the finder reads it (so the lab's scale is kept, not relearnt)."""
    fields_dir = Path(fields_dir)
    images, cells, paths, rbc = [], [], [], []
    for name, marks in sorted(points.items()):
        path = fields_dir / name
        if not path.is_file():
            raise WbcnetError(f"{path}: a points file names this field, but it is not in {fields_dir}")
        try:
            rgb = load_rgb(path)
        except ImageReadError as e:
            raise WbcnetError(f"{path}: {e.reason}") from None
        search = finder.search_field(rgb)
        seen = search.cells + search.rejected
        mine = []
        for x, y, kind in marks:
            if kind != "wbc":
                continue
            under = [b for b in seen if np.hypot(b.cx - x, b.cy - y) <= b.radius]
            mine.append([x, y, min(under, key=lambda b: np.hypot(b.cx - x, b.cy - y)).radius if under else np.nan])
        images.append(rgb)
        cells.append(np.array(mine, np.float32).reshape(-1, 3))
        paths.append(str(path))
        rbc.append(search.red_cell_px)
    known = [r for c in cells for r in c[:, 2] if r == r]
    fallback = float(np.median(known)) if known else None
    for c, red in zip(cells, rbc):
        c[np.isnan(c[:, 2]), 2] = fallback if fallback else 0.8 * red
    return Source(lab, "fields", images, cells, [np.zeros((0, 3), np.float32) for _ in images], paths, rbc)


def adapt_finder(fields_dir, points_csv, out, checkpoint=None, base=None, steps: int = 300, batch_size: int = 16,
                 seed: int = 0, progress: bool = True, log=print) -> Path:
    """Fine-tune the finder on a lab's corrected fields and write a lab model to `out` (see the
    module's doc). Returns `out`. Nothing is left in `out` unless the whole model was written."""
    from ..cells.finder.net import load_finder
    from ..cells.finder.paths import SHIPPED
    from ..models.checkpoint import resolve_checkpoint
    from ..training.finder import FinderTrainConfig, fit

    out = Path(out)
    if (out / "finder.json").exists():
        raise WbcnetError(f"{out}: already holds a lab model; choose another --out")
    ckpt = resolve_checkpoint(checkpoint)
    start = Path(base) if base is not None else SHIPPED
    points = read_points(points_csv)
    finder = load_finder(start)
    source = taught_fields(fields_dir, points, finder)
    n_cells = sum(len(c) for c in source.cells)
    n_not = sum(1 for marks in points.values() for *_, k in marks if k == "not")
    log(f"teaching the finder {len(source)} fields: {n_cells} white cells, everything else not "
        f"({n_not} marked 'not a white cell')")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = FinderTrainConfig(steps=steps, batch_size=batch_size, lr=5e-4, seed=seed, mosaic=0.25, field_share=1.0,
                            labs=["lab"])
    fit([source], cfg, tmp / "finder", progress=progress, log=log, start=start)
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(ckpt.with_suffix(suffix), tmp / f"best{suffix}")
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    tmp.replace(out)
    return out
