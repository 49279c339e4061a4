"""Which of a lab's cells are worth labelling (`suggest`): the sheet a person fills in.

`suggest` writes the chosen cells as pictures and a sheet (suggest.csv: path,label,...) that a
person fills in; `wbcnet adapt --data suggest.csv` reads the filled sheet, and the page's labelling
step writes the same sheet. The cells come from inference/lab_cells.py (`read_lab_cells`).

Which cells: uncertain ones, spread over the lab's variety, and likely members of every class
(basophils are 1% of a lab's cells; a random draw of 50 often holds none):
- a few slots per class go to the cells the model thinks most likely of that class;
- the rest go to clusters of the lab's features (k-means, one cluster per slot), and in each
  cluster to its most uncertain cell (highest entropy), so no two picks teach the same thing.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import WbcnetError
from ..core.files import atomic_write
from ..inference.lab_cells import OnProgress, cell_picture, read_lab_cells

SHEET_COLUMNS = ["path", "label", "rank", "predicted", "confidence", "reason"]


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
    from ..inference.calibration import softmax
    from ..inference.runner import predict_logits

    logits, features = predict_logits(model, images, meta.mean, meta.std, 128, with_features=True)
    return softmax(logits, meta.temperature), features


def suggest(parent_path, unlabelled, n: int, out, *, kind: str = "auto", seed: int = 0, progress: bool = True,
            on_progress: OnProgress | None = None, limit: int | None = 20_000) -> Path:
    """Pick the n cells of `unlabelled` worth labelling and write them to `out`: cells/NNNN.png and
    suggest.csv (path,label,rank,predicted,confidence,reason; label empty, to be filled in).
    Returns the sheet's path."""
    from PIL import Image

    from ..cells.preprocess import from_meta
    from ..inference.count import lab_finder
    from ..models.checkpoint import load_model

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


__all__ = ["suggest", "pick_cells", "lab_predictions", "write_sheet", "Pick", "SHEET_COLUMNS"]
