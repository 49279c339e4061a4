"""What the learned finder learns from: pictures with their white cells' circles.

Two kinds of source, each of one lab:
- single-cell pictures (Raabin-WBC, PBC: an ImageFolder): one white cell at the middle. Its
  circle comes from the threshold finder where it is sure (found, near the middle, of a
  plausible size); other cells the threshold finder sees in the picture are not taught as
  "no cell" but left out of the loss (`ignore`), since they may be white cells.
- whole fields with hand-drawn boxes (BCCD's fields and wbc_boxes.csv; BCD's fields, whose
  boxes.csv marks every white cell WBC and every red cell RBC).

Every picture also carries its red cells' diameter, the scale the finder learns to read: on
fields the median red-cell box (BCCD's other_boxes.csv, BCD's RBC rows), on single-cell pictures
the lab's typical red cell, measured (`lab_red_cell`).

Sources are decoded once and kept in .cache/wbcnet/finder/ as .npz (pictures and circles), keyed
by the folder and the number of pictures taken, so the second run of `wbcnet finder train`
starts at once.
"""
from __future__ import annotations

import csv
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import WbcnetError
from ..core.imageio import is_candidate, load_rgb

# Single-cell pictures are kept at this side (Raabin-WBC and PBC come at 224).
PICTURE_SIDE = 224
# The threshold finder's circle is taken as a label only when its centre is this close to the
# middle (share of the side) and its radius within these shares of the side: Raabin-WBC's cells
# are ~1/6 of the side in radius, PBC's ~1/4.
_MAX_OFF_CENTRE = 0.2
_RADIUS_RANGE = (0.08, 0.45)
# Hand-drawn BCCD boxes are loose: the cell's radius is about this share of the box's half-size.
BOX_TO_RADIUS = 0.9
# The threshold ruler (locate_classic.red_cell_diameter) reads a home lab's red cells about a
# tenth smaller than they look: 51 px for Raabin-WBC's ~56-60, 45 for PBC's ~50-55 (medians of
# 150 pictures at 224 px, against a look at a picture of each). Single-cell pictures, which have
# no red-cell boxes, take the lab's median reading times this.
_RULER_TO_BOX = 1.1


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
    rbc: list = field(default_factory=list)  # per picture: red-cell diameter in its pixels (nan: unknown)

    def red_cell(self, i: int) -> float:
        return float(self.rbc[i]) if i < len(self.rbc) else float("nan")

    def __len__(self) -> int:
        return len(self.images)


def _cache_file(cache_dir: Path, what: str) -> Path:
    return cache_dir / (hashlib.sha1(what.encode()).hexdigest()[:16] + ".npz")


def load_cell_pictures(root, lab: str, limit: int | None, seed: int, cache_dir, workers: int = 2,
                       progress: bool = True) -> Source:
    """Up to `limit` single-cell pictures of an ImageFolder (a seeded draw),
    each with its cell's circle from the threshold finder; pictures where it is unsure are
    left out."""
    from ..cells.classic import find_cell, find_cells

    root = Path(root)
    paths = sorted(p for p in root.glob("*/*") if is_candidate(p))
    if not paths:
        raise WbcnetError(f"{root}: no pictures found (an ImageFolder of single-cell pictures is expected)")
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(paths):
        paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
    cache = _cache_file(Path(cache_dir), f"cells {root.resolve()} {len(paths)} {seed} v3")
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        keep = z["keep"]
        images = z["images"]
        cells = [c[None] for c in z["cells"]]
        ignore = _unflatten(z["ignore"], z["ignore_n"])
        kept = [p for p, k in zip(paths, keep) if k]
        return Source(lab, "cells", list(images), cells, ignore, [str(p) for p in kept],
                      [float(z["rbc"])] * len(images))

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
    rbc = lab_red_cell(images)
    np.savez(tmp, images=np.stack(images), cells=np.concatenate(cells), ignore=flat, ignore_n=counts,
             keep=np.array(keep), rbc=np.array(rbc))
    tmp.replace(cache)
    kept = [str(p) for p, k in zip(paths, keep) if k]
    return Source(lab, "cells", images, cells, ignore, kept, [rbc] * len(images))


def lab_red_cell(images: list, n: int = 200) -> float:
    """A lab's typical red-cell diameter in its single-cell pictures (all at one magnification):
    the median threshold-ruler reading of up to `n` of them, times _RULER_TO_BOX; nan when the
    ruler reads none. Used only to label training pictures, never to find cells."""
    from ..cells.classic import red_cell_diameter

    step = max(1, len(images) // n)
    readings = [d for d in (red_cell_diameter(im) for im in images[::step]) if d]
    return float(np.median(readings)) * _RULER_TO_BOX if readings else float("nan")


def load_fields(images_dir, boxes_csv, lab: str = "bccd", others_csv=None) -> Source:
    """Whole fields and their hand-drawn boxes: `boxes_csv` is file,x0,y0,x1,y1 with either a
    `label` column (every row a white cell) or a `kind` column (WBC rows white cells, RBC rows red
    cells); `others_csv` (file,x0,y0,x1,y1,kind) may add red cells. A field's scale is the median
    red-cell box not cut by its edge, or the lab's median where a field has fewer than 3."""
    images_dir = Path(images_dir)
    boxes: dict[str, list] = {}
    red: dict[str, list] = {}
    for path in [boxes_csv] + ([others_csv] if others_csv else []):
        path = Path(path)
        try:
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
                    kind = (row.get("kind") or ("WBC" if path == Path(boxes_csv) else "")).strip().upper()
                    if kind == "WBC":
                        r = BOX_TO_RADIUS * ((x1 - x0) + (y1 - y0)) / 4
                        boxes.setdefault(row["file"], []).append(((x0 + x1) / 2, (y0 + y1) / 2, r))
                    elif kind == "RBC":
                        red.setdefault(row["file"], []).append((x0, y0, x1, y1))
        except (OSError, KeyError, ValueError) as e:
            raise WbcnetError(f"{path}: not a box list with file,x0,y0,x1,y1 columns ({e})") from None
    paths = sorted(p for p in images_dir.iterdir() if is_candidate(p))
    images = [load_rgb(p) for p in paths]
    rbc = [_red_cell_size(red.get(p.name, []), im.shape[1], im.shape[0]) for p, im in zip(paths, images)]
    known = [d for d in rbc if d == d]
    lab_median = float(np.median(known)) if known else float("nan")
    rbc = [d if d == d else lab_median for d in rbc]
    cells = [np.array(boxes.get(p.name, []), np.float32).reshape(-1, 3) for p in paths]
    return Source(lab, "fields", images, cells, [np.zeros((0, 3), np.float32) for _ in paths], [str(p) for p in paths],
                  rbc)


def _red_cell_size(red: list, width: int, height: int) -> float:
    """Median longer side of the red-cell boxes not touching the field's edge (a cut cell's box is
    short); nan with fewer than 3."""
    whole = [max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in red if x0 > 1 and y0 > 1 and x1 < width - 2 and y1 < height - 2]
    return float(np.median(whole)) if len(whole) >= 3 else float("nan")


def _flatten(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([len(a) for a in arrays], np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros((0, 3), np.float32)
    return flat.reshape(-1, 3), counts


def _unflatten(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return list(np.split(flat, np.cumsum(counts)[:-1])) if len(counts) else []
