"""What the learned finder learns from: pictures with their white cells' circles.

Two kinds of source, each of one lab:
- single-cell pictures (Raabin-WBC, PBC: an ImageFolder): one white cell at the middle. Its
  circle comes from the threshold finder where it is sure (found, near the middle, of a
  plausible size); other cells the threshold finder sees in the picture are not taught as
  "no cell" but left out of the loss (`ignore`), since they may be white cells.
- whole fields with hand-drawn boxes (BCCD's fields and wbc_boxes.csv).

Sources are decoded once and kept in .cache/wbcnet/finder/ as .npz (pictures and circles), keyed
by the folder and the number of pictures taken, so the second run of `wbcnet finder train`
starts at once.
"""
from __future__ import annotations

import csv
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.imageio import is_candidate, load_rgb
from ..errors import WbcnetError

# Single-cell pictures are kept at this side (Raabin-WBC and PBC come at 224).
PICTURE_SIDE = 224
# The threshold finder's circle is taken as a label only when its centre is this close to the
# middle (share of the side) and its radius within these shares of the side: Raabin-WBC's cells
# are ~1/6 of the side in radius, PBC's ~1/4.
_MAX_OFF_CENTRE = 0.2
_RADIUS_RANGE = (0.08, 0.45)
# Hand-drawn BCCD boxes are loose: the cell's radius is about this share of the box's half-size.
BOX_TO_RADIUS = 0.9


@dataclass
class Source:
    """Pictures of one lab: images (N x H x W x 3 uint8, or a list for mixed sizes), per picture
    an array of cells (cx, cy, r) to find and of cells to leave out of the loss."""

    lab: str
    kind: str                     # "cells" (single-cell pictures) or "fields"
    images: list
    cells: list                   # per picture: K x 3 float32
    ignore: list                  # per picture: M x 3 float32
    paths: list

    def __len__(self) -> int:
        return len(self.images)


def _cache_file(cache_dir: Path, what: str) -> Path:
    return cache_dir / (hashlib.sha1(what.encode()).hexdigest()[:16] + ".npz")


def load_cell_pictures(root, lab: str, limit: int | None, seed: int, cache_dir, workers: int = 2,
                       progress: bool = True) -> Source:
    """Up to `limit` single-cell pictures of an ImageFolder (a seeded draw),
    each with its cell's circle from the threshold finder; pictures where it is unsure are
    left out."""
    from ..data.locate_classic import find_cell, find_cells

    root = Path(root)
    paths = sorted(p for p in root.glob("*/*") if is_candidate(p))
    if not paths:
        raise WbcnetError(f"{root}: no pictures found (an ImageFolder of single-cell pictures is expected)")
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(paths):
        paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
    cache = _cache_file(Path(cache_dir), f"cells {root.resolve()} {len(paths)} {seed} v2")
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        keep = z["keep"]
        images = z["images"]
        cells = [c[None] for c in z["cells"]]
        ignore = _unflatten(z["ignore"], z["ignore_n"])
        kept = [p for p, k in zip(paths, keep) if k]
        return Source(lab, "cells", list(images), cells, ignore, [str(p) for p in kept])

    from tqdm import tqdm

    def label(path):
        rgb = load_rgb(path, PICTURE_SIDE)
        box = find_cell(rgb)
        s = rgb.shape[0]
        if (box is None or np.hypot(box.cx - s / 2, box.cy - s / 2) > _MAX_OFF_CENTRE * s
                or not _RADIUS_RANGE[0] * s <= box.radius <= _RADIUS_RANGE[1] * s):
            return rgb, None, None
        others = [(b.cx, b.cy, b.radius) for b in find_cells(rgb)
                  if np.hypot(b.cx - box.cx, b.cy - box.cy) > box.radius]
        return rgb, (box.cx, box.cy, box.radius), np.array(others, np.float32).reshape(-1, 3)

    images, cells, ignore, keep = [], [], [], []
    with ThreadPoolExecutor(workers) as pool:
        for rgb, cell, others in tqdm(pool.map(label, paths), total=len(paths), desc=f"labelling {lab}",
                                      unit="img", disable=not progress):
            keep.append(cell is not None)
            if cell is not None:
                images.append(rgb)
                cells.append(np.array([cell], np.float32))
                ignore.append(others)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    flat, counts = _flatten(ignore)
    np.savez(tmp, images=np.stack(images), cells=np.concatenate(cells), ignore=flat, ignore_n=counts,
             keep=np.array(keep))
    tmp.replace(cache)
    kept = [str(p) for p, k in zip(paths, keep) if k]
    return Source(lab, "cells", images, cells, ignore, kept)


def load_fields(images_dir, boxes_csv, lab: str = "bccd") -> Source:
    """Whole fields and their hand-drawn white-cell boxes (file,x0,y0,x1,y1[,label])."""
    images_dir, boxes_csv = Path(images_dir), Path(boxes_csv)
    boxes: dict[str, list] = {}
    try:
        with open(boxes_csv, newline="") as fh:
            for row in csv.DictReader(fh):
                x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
                r = BOX_TO_RADIUS * ((x1 - x0) + (y1 - y0)) / 4
                boxes.setdefault(row["file"], []).append(((x0 + x1) / 2, (y0 + y1) / 2, r))
    except (OSError, KeyError, ValueError) as e:
        raise WbcnetError(f"{boxes_csv}: not a box list with file,x0,y0,x1,y1 columns ({e})") from None
    paths = sorted(p for p in images_dir.iterdir() if is_candidate(p))
    images = [load_rgb(p) for p in paths]
    cells = [np.array(boxes.get(p.name, []), np.float32).reshape(-1, 3) for p in paths]
    return Source(lab, "fields", images, cells, [np.zeros((0, 3), np.float32) for _ in paths], [str(p) for p in paths])


def _flatten(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([len(a) for a in arrays], np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros((0, 3), np.float32)
    return flat.reshape(-1, 3), counts


def _unflatten(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return list(np.split(flat, np.cumsum(counts)[:-1])) if len(counts) else []
