"""A lab's own cells without labels: read them (`read_lab_cells`), and pick the ones worth labelling
(`suggest`).

A lab has thousands of unlabelled cells (every field it counts holds some) and will label a few
dozen if it is shown which. `read_lab_cells` takes single-cell pictures or whole fields: the finder
(data/locate.py, the one seam) cuts a field's white cells out, and cells cut by the field's edge
are left out, as `count` marks them. `suggest` writes the chosen cells as pictures and a sheet
(suggest.csv: path,label,...) that a person fills in; `wbcnet adapt --data suggest.csv` reads the
filled sheet, and the page's labelling step writes the same sheet.

Which cells: uncertain ones, spread over the lab's variety, and likely members of every class
(basophils are 1% of a lab's cells; a random draw of 50 often holds none):
- a few slots per class go to the cells the model thinks most likely of that class;
- the rest go to clusters of the lab's features (k-means, one cluster per slot), and in each
  cluster to its most uncertain cell (highest entropy), so no two picks teach the same thing.
"""
from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import WbcnetError
from .files import atomic_write

# A picture is taken for a whole field when it is clearly not square (cameras: 4:3, 3:2, 16:10)
# or large; cell crops are square or nearly so (Raabin-WBC, PBC, the tight and loose crops).
FIELD_ASPECT = 1.2
FIELD_MIN_SIDE = 1000
KINDS = ("auto", "cells", "fields")
SHEET_COLUMNS = ["path", "label", "rank", "predicted", "confidence", "reason"]
# Pictures of suggested cells: the window count cuts around a cell (2.5 diameters), so the
# labelled picture reads back as a single-cell picture whose centre is the cell.
WINDOW_CONTEXT = 2.5
PICTURE_MAX_SIDE = 320

OnProgress = Callable[[float, str], None]


@dataclass
class LabCells:
    """A lab's cells as model inputs, and where each came from."""

    images: np.ndarray                      # (N, 3, S, S) uint8
    origin: list[str]                       # the picture each cell came from
    boxes: list                             # CellBox in a field, or None: the picture is the cell
    n_pictures: int = 0                     # single-cell pictures read
    n_fields: int = 0                       # whole fields read
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), unreadable or no cell

    def __len__(self) -> int:
        return len(self.origin)

    def summary(self) -> str:
        parts = [f"{len(self)} cells"]
        if self.n_pictures:
            parts.append(f"{self.n_pictures} single-cell pictures")
        if self.n_fields:
            parts.append(f"{self.n_fields} fields")
        if self.errors:
            parts.append(f"{len(self.errors)} pictures skipped (unreadable or no white cell)")
        return ", ".join(parts)


def picture_kind(path: str, kind: str = "auto") -> str:
    """'cell' or 'field' for one picture; `kind` cells/fields decides for all of them."""
    if kind != "auto":
        return kind.rstrip("s")
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception:  # unreadable: decoded below, where the reason is reported
        return "cell"
    return "field" if max(w, h) >= FIELD_ASPECT * min(w, h) or min(w, h) >= FIELD_MIN_SIDE else "cell"


def read_lab_cells(inputs: list[str] | str, prep, kind: str = "auto", limit: int | None = None, seed: int = 0,
                   progress: bool = True, on_progress: OnProgress | None = None,
                   finder_weights: str | None = None) -> LabCells:
    """Every cell of a lab's pictures (files, folders, globs) as model inputs. `limit`: at most so
    many cells, drawn at random (seeded) from all of them. `finder_weights`: the lab's own finder
    for its fields (count.lab_finder of a lab model), else the shipped one."""
    from .count import find_field_cells
    from .data.cache import decode_images, default_workers
    from .predict import expand_inputs

    if kind not in KINDS:
        raise WbcnetError(f"--unlabelled-kind {kind}: not one of {', '.join(KINDS)}")
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths, skipped = expand_inputs([str(i) for i in inputs])
    if not paths:
        raise WbcnetError(f"{', '.join(map(str, inputs))}: no pictures here"
                          + (f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    kinds = [picture_kind(p, kind) for p in paths]
    cells_at = [p for p, k in zip(paths, kinds) if k == "cell"]
    fields_at = [p for p, k in zip(paths, kinds) if k == "field"]
    images, origin, boxes, errors = [], [], [], []
    if cells_at:
        if on_progress:
            on_progress(0.0, f"reading {len(cells_at)} cell pictures")
        decoded = decode_images(cells_at, prep, desc="reading cells", progress=progress)
        keep = decoded.found  # a picture in which no white cell was found teaches nothing
        images.append(decoded.images[keep])
        origin += [cells_at[i] for i in decoded.index[keep]]
        boxes += [None] * int(keep.sum())
        errors += decoded.errors + [(cells_at[i], "no white cell found") for i in decoded.index[~keep]]
    if fields_at:
        from tqdm import tqdm

        with ThreadPoolExecutor(default_workers()) as pool:
            found = pool.map(lambda p: find_field_cells(p, prep, finder_weights=finder_weights), fields_at)
            for i, f in enumerate(tqdm(found, total=len(fields_at), desc="finding cells in fields", unit="field",
                                       disable=not progress, leave=False)):
                if on_progress and i % 10 == 0:
                    on_progress(i / len(fields_at), f"finding cells in field {i + 1} of {len(fields_at)}")
                if f.error:
                    errors.append((f.path, f.error))
                    continue
                whole = [j for j, cut in enumerate(f.edge) if not cut]  # a cell cut by the edge is half a cell
                if whole:
                    images.append(np.stack([f.inputs[j] for j in whole]))
                origin += [f.path] * len(whole)
                boxes += [f.boxes[j] for j in whole]
    size = prep.size
    all_images = np.concatenate(images) if images else np.zeros((0, 3, size, size), np.uint8)
    if limit is not None and len(origin) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(origin), limit, replace=False))
        all_images, origin, boxes = all_images[pick], [origin[i] for i in pick], [boxes[i] for i in pick]
    return LabCells(all_images, origin, boxes, len(cells_at), len(fields_at), errors)


def cell_picture(cells: LabCells, i: int) -> np.ndarray:
    """An RGB picture of cell i for a person to label, readable back as a single-cell picture."""
    from .data.imageio import load_rgb
    from .data.locate import crop_square

    rgb = load_rgb(cells.origin[i])
    if cells.boxes[i] is not None:
        rgb = crop_square(rgb, cells.boxes[i], WINDOW_CONTEXT)
    if max(rgb.shape[:2]) > PICTURE_MAX_SIDE:
        from PIL import Image

        img = Image.fromarray(rgb)
        img.thumbnail((PICTURE_MAX_SIDE, PICTURE_MAX_SIDE), Image.Resampling.LANCZOS)
        rgb = np.asarray(img)
    return rgb


@dataclass(frozen=True)
class Pick:
    index: int      # row of the lab's cells
    reason: str


def pick_cells(probs: np.ndarray, features: np.ndarray, n: int, classes: list[str], seed: int = 0) -> list[Pick]:
    """The n cells worth labelling (module docstring): per-class slots, then one uncertain cell per
    cluster of the lab's features. In the order a person should label them."""
    from sklearn.cluster import KMeans

    total, n_classes = probs.shape
    n = min(n, total)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1) / np.log(n_classes)
    chosen: list[Pick] = []
    taken = np.zeros(total, bool)
    # Per class: a quarter of the slots shared out, at least one each when n allows.
    per_class = max(1, n // (4 * n_classes)) if n >= n_classes else 0
    for c in np.argsort(probs.mean(0)):  # the rarest-looking classes first
        order = np.argsort(-probs[:, c])
        for i in order[~taken[order]][:per_class]:
            chosen.append(Pick(int(i), f"most likely {classes[c]} here (p {probs[i, c]:.2f}): every class needs examples"))
            taken[i] = True
    rest = n - len(chosen)
    if rest > 0:
        f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-8)
        free = np.flatnonzero(~taken)
        k = min(rest, len(free))
        groups = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(f[free])
        sizes = np.bincount(groups, minlength=k)
        for g in np.argsort(-sizes):  # the commonest kinds of cell first
            members = free[groups == g]
            i = members[np.argmax(entropy[members])]
            top = np.argsort(-probs[i])[:2]
            chosen.append(Pick(int(i), f"unsure: {classes[top[0]]} {probs[i, top[0]]:.2f} or {classes[top[1]]} "
                                       f"{probs[i, top[1]]:.2f}; like {sizes[g] - 1} other cells"))
    return chosen


def lab_predictions(model, meta, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and features of the lab's cells under `model`."""
    from .calibration import softmax
    from .inference import predict_logits

    logits, features = predict_logits(model, images, meta.mean, meta.std, 128, with_features=True)
    return softmax(logits, meta.temperature), features


def suggest(parent_path, unlabelled, n: int, out, *, kind: str = "auto", seed: int = 0, progress: bool = True,
            on_progress: OnProgress | None = None, limit: int | None = 20_000) -> Path:
    """Pick the n cells of `unlabelled` worth labelling and write them to `out`: cells/NNNN.png and
    suggest.csv (path,label,rank,predicted,confidence,reason; label empty, to be filled in).
    Returns the sheet's path."""
    from PIL import Image

    from .checkpoint import load_model
    from .count import lab_finder
    from .data.preprocess import from_meta

    if n < 1:
        raise WbcnetError(f"--suggest {n}: ask for 1 or more cells")
    sheet = Path(out) / "suggest.csv"
    if sheet.exists():  # a person's labels are never written over
        with open(sheet, newline="", encoding="utf-8-sig") as fh:
            if any((r.get("label") or "").strip() for r in csv.DictReader(fh)):
                raise WbcnetError(f"{sheet}: holds labels already; give another --out for new suggestions")
    model, meta = load_model(parent_path)
    cells = read_lab_cells(unlabelled, from_meta(meta), kind, limit=limit, seed=seed, progress=progress,
                           finder_weights=lab_finder(meta),
                           on_progress=on_progress)
    if not len(cells):
        raise WbcnetError(f"{unlabelled}: no white cell found in {cells.n_pictures + cells.n_fields} pictures")
    if on_progress:
        on_progress(0.5, f"scoring {len(cells)} cells")
    probs, features = lab_predictions(model, meta, cells.images)
    picks = pick_cells(probs, features, n, list(meta.classes), seed)
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    rows = []
    for rank, p in enumerate(picks, start=1):
        name = f"cells/{rank:04d}.png"
        with atomic_write(out / name) as tmp:
            Image.fromarray(cell_picture(cells, p.index)).save(tmp, format="PNG")
        c = int(probs[p.index].argmax())
        rows.append({"path": name, "label": "", "rank": rank, "predicted": meta.classes[c],
                     "confidence": f"{probs[p.index, c]:.3f}", "reason": p.reason})
        if on_progress:
            on_progress(0.9 + 0.1 * rank / len(picks), f"wrote {rank} of {len(picks)} cells")
    write_sheet(sheet, rows)
    print(f"suggested {len(rows)} of {cells.summary()} -> {sheet} (fill in the label column: "
          f"{', '.join(meta.classes)}; leave it empty to skip a cell)")
    return sheet


def write_sheet(path: Path, rows: list[dict]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=SHEET_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


__all__ = ["LabCells", "read_lab_cells", "picture_kind", "suggest", "pick_cells", "lab_predictions", "write_sheet",
           "SHEET_COLUMNS", "KINDS"]
