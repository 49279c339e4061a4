"""A lab's own cells without labels, read from its pictures (`read_lab_cells`); lab/suggest.py picks
the ones worth labelling.

A lab has thousands of unlabelled cells (every field it counts holds some). `read_lab_cells` takes
single-cell pictures or whole fields: the finder (cells/locate.py, the one seam) cuts a field's
white cells out, and cells cut by the field's edge are left out, as `count` marks them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import WbcnetError

# A picture is taken for a whole field when it is clearly not square (cameras: 4:3, 3:2, 16:10)
# or large; cell crops are square or nearly so (Raabin-WBC, PBC, the tight and loose crops).
FIELD_ASPECT = 1.2
FIELD_MIN_SIDE = 1000
KINDS = ("auto", "cells", "fields")
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
    from ..data.cache import decode_images, default_workers
    from .count import find_field_cells
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
    from ..cells.locate import crop_square
    from ..core.imageio import load_rgb

    rgb = load_rgb(cells.origin[i])
    if cells.boxes[i] is not None:
        rgb = crop_square(rgb, cells.boxes[i], WINDOW_CONTEXT)
    if max(rgb.shape[:2]) > PICTURE_MAX_SIDE:
        from PIL import Image

        img = Image.fromarray(rgb)
        img.thumbnail((PICTURE_MAX_SIDE, PICTURE_MAX_SIDE), Image.Resampling.LANCZOS)
        rgb = np.asarray(img)
    return rgb


__all__ = ["LabCells", "read_lab_cells", "picture_kind", "cell_picture", "KINDS", "FIELD_ASPECT", "FIELD_MIN_SIDE"]
