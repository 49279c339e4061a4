"""Find the white cells in a picture: the one seam every command that finds cells goes through.

- `find_cell(rgb)`: a single-cell picture (a lab's crop): the white cell nearest its middle.
  `find_cell_batch(rgbs)`: the same for many pictures at once, the learned finder's network run
  on them as one batch (cells/preprocess.py's `cell_inputs`, which train/evaluate/predict/adapt/
  serve with crop="cell" use).
- `search_field(rgb)`: a whole smear field: every white cell, the candidates judged not to be
  white cells, and the scale the finder read (a `FieldSearch`). count and serve use it;
  `find_cells(rgb)` is its cells alone.

Both use the learned finder (cells/finder/net.py, weights shipped in assets/finder.*) unless
`finder="classic"` names the threshold finder of earlier versions (cells/classic.py), which
is kept as the baseline and to label training pictures; see docs/architecture.md ("Finding the white cells") for where each is better.

The finder in use is one per process and one per weights file (`get_finder`), loaded on first
use. It runs on one thread wherever it is called (decode threads share the cores).
"""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np

from .cellbox import DEFAULT_CONTEXT, CellBox, FieldSearch, crop_square, plasma_colour

__all__ = ["CellBox", "DEFAULT_CONTEXT", "FINDERS", "FieldSearch", "crop_square", "find_cell", "find_cells",
           "find_cell_batch", "finder_id", "get_finder", "plasma_colour", "search_field"]

FINDERS = ("learned", "classic")


@lru_cache(maxsize=4)
def get_finder(path: str | None = None):
    """The learned finder at `path` (None: the shipped one), loaded once per process."""
    from .finder.net import load_finder

    return load_finder(path)


@lru_cache(maxsize=None)
def finder_id(finder: str = "learned") -> str:
    """"classic", or "learned:" and the first 12 hex digits of the shipped finder's weights'
    SHA-256, read from its JSON (no torch): what the decode cache and checkpoints are keyed on."""
    if finder == "classic":
        return finder
    _check(finder)
    from .finder.paths import SHIPPED_JSON

    try:
        sha = json.loads(SHIPPED_JSON.read_text())["weights_sha256"]
    except (OSError, ValueError, KeyError):
        sha = "missing"
    return f"learned:{sha[:12]}"


def find_cell(rgb: np.ndarray, finder: str = "learned") -> CellBox | None:
    """The white cell nearest the middle of a single-cell picture (HxWx3 uint8, any size), in
    its pixels; None when nothing in it looks like a white cell."""
    return find_cell_batch([rgb], finder)[0]


def find_cell_batch(pictures: list[np.ndarray], finder: str = "learned") -> list[CellBox | None]:
    """`find_cell` of each single-cell picture (any sizes). The learned finder runs its network
    once on all pictures of one size: its forward pass, 2.9 ms for a 575 px picture alone on one
    thread, is 1.2 ms a picture in batches of 32 (cells/finder/net.py, Finder.find_central)."""
    if finder == "classic":
        from .classic import find_cell as classic

        return [classic(rgb) for rgb in pictures]
    _check(finder)
    return get_finder().find_central(list(pictures))


def find_cells(field_rgb: np.ndarray, finder: str = "learned", weights: str | None = None) -> list[CellBox]:
    """Every white cell in a whole smear field (HxWx3 uint8 of any size and magnification), in
    its pixels, most confident first; empty when none is found."""
    return search_field(field_rgb, finder, weights).cells


def search_field(field_rgb: np.ndarray, finder: str = "learned", weights: str | None = None) -> FieldSearch:
    """What the finder sees in a whole field: its white cells, the candidates it rejected and the
    scale it read. `weights`: a lab's own finder (`wbcnet finder adapt`) instead of the shipped one."""
    if finder == "classic":
        from .classic import find_cells as classic
        from .classic import red_cell_diameter

        return FieldSearch(classic(field_rgb), [], red_cell_diameter(field_rgb) or float("nan"))
    _check(finder)
    return get_finder(weights).search_field(field_rgb)


def _check(finder: str) -> None:
    if finder not in FINDERS:
        raise ValueError(f"finder must be one of {', '.join(FINDERS)}, not {finder!r}")
