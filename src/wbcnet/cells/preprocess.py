"""How an image file becomes a model's input: decode, (find the cell and crop to it,) resize,
(redraw it in the reference stain).

The same `Preprocess` runs when the decode cache is filled for training, and in evaluate,
predict, count and serve, and it is stored in every checkpoint, so a checkpoint always gets the
preprocessing it was trained with.

crop="cell" finds the white cell (cells/locate.py: the learned finder, or `finder="classic"`, the
thresholds of earlier versions) and crops a square of `context` times its diameter around it, so
the cell reaches the model at one scale whatever the lab's framing. Where no cell is found the
whole image is used, and the caller is told (`found` False). A checkpoint records the finder and,
for the learned one, the first 12 hex digits of its weights' SHA-256 (`finder_weights`).
`load_inputs`/`cell_inputs` make many pictures' inputs at once, the learned finder run on them as
one batch (data/cache.py hands each reading thread a chunk of paths): one picture at a time, the
finder's network was ~4.6 of the ~8 ms a 575 px Raabin-WBC picture's input took on one thread;
in chunks of 32 the whole input takes ~4.5 ms (issue 30).

stain="nucleus" redraws the model-size image with the reference nucleus stain (cells/stain.py), so
that one lab's magenta and another's violet reach the model as one colour.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.errors import WbcnetError
from ..core.imageio import ImageReadError, load_rgb, square_resize
from .locate import DEFAULT_CONTEXT, FINDERS, crop_square, find_cell_batch, finder_id
from .stain import STAINS, normalize_stain

CROPS = ("none", "cell")
# Decode JPEGs at least this many times the model size before cropping to the cell, so that the
# crop (a third to a half of a Raabin-WBC picture) is not upsampled.
_DECODE_MARGIN = 2.5
# load_inputs holds a batch's decoded pictures until the finder has seen them: at most this many
# pixels (a batch of 32 Raabin-WBC pictures, decoded at 288 px, is 2.7 million; a few huge
# pictures make smaller batches rather than gigabytes).
_BATCH_PIXELS = 16_000_000


@dataclass(frozen=True)
class Preprocess:
    size: int                       # model input side, pixels
    crop: str = "none"              # "none": the whole picture; "cell": find the cell and crop to it
    context: float = DEFAULT_CONTEXT  # crop side / cell diameter, for crop="cell"
    stain: str = "none"             # "none", or "nucleus": redrawn in the reference stain
    finder: str = "learned"         # for crop="cell": "learned" (the shipped finder) or "classic"

    def __post_init__(self):
        if self.crop not in CROPS:
            raise WbcnetError(f"crop: {self.crop!r} is not one of {', '.join(CROPS)}")
        if not (1.0 <= self.context <= 5.0):
            raise WbcnetError(f"crop_context: {self.context!r} must be between 1 and 5 cell diameters")
        if self.finder not in FINDERS:
            raise WbcnetError(f"finder: {self.finder!r} is not one of {', '.join(FINDERS)}")
        if self.stain not in STAINS:
            raise WbcnetError(f"stain: {self.stain!r} is not one of {', '.join(STAINS)}")

    def key(self) -> str:
        """What the decode cache must be keyed on."""
        return (f"size={self.size} crop={self.crop}"
                + (f" context={self.context:g} finder={finder_id(self.finder)}" if self.crop == "cell" else "")
                + (f" stain={self.stain}" if self.stain != "none" else ""))

    def to_dict(self) -> dict:
        # "stain" only when used, so a checkpoint without it reads the same in older wbcnet; the
        # finder (and its weights' hash) only with the cell crop.
        d = {k: v for k, v in asdict(self).items() if k != "size" and not (k == "stain" and v == "none")}
        if self.crop != "cell":
            d.pop("finder")
        elif self.finder == "learned":
            d["finder_weights"] = finder_id(self.finder).split(":", 1)[1]
        return d


def from_meta(meta) -> Preprocess:
    """The preprocessing a checkpoint was trained with (older checkpoints: the whole picture)."""
    # finder_weights says which finder weights made the training crops; the shipped finder is used.
    known = {k: v for k, v in (meta.preprocess or {}).items() if k != "finder_weights"}
    return Preprocess(size=int(meta.img_size), **known)


def load_input(path, prep: Preprocess) -> tuple[np.ndarray, bool]:
    """(S x S x 3 uint8 model input, whether a cell was found). Raises ImageReadError."""
    made = load_inputs([path], prep)[0]
    if isinstance(made, ImageReadError):
        raise made
    return made


def load_inputs(paths, prep: Preprocess) -> list[tuple[np.ndarray, bool] | ImageReadError]:
    """`load_input` of each path, in order, on the calling thread; an unreadable file's entry is
    its ImageReadError. With the cell crop the finder sees the pictures in batches (up to
    _BATCH_PIXELS decoded pixels each), the same cells it finds one at a time."""
    if prep.crop == "none":
        return [_or_error(lambda: (normalize_stain(load_rgb(p, prep.size), prep.stain), True)) for p in paths]
    out: list = [None] * len(paths)
    held: list[tuple[int, np.ndarray]] = []
    for i, path in enumerate(paths):
        rgb = out[i] = _or_error(lambda: load_rgb(path, min_side=int(prep.size * _DECODE_MARGIN)))
        if not isinstance(rgb, ImageReadError):
            held.append((i, rgb))
        if held and (i == len(paths) - 1 or sum(r.shape[0] * r.shape[1] for _, r in held) >= _BATCH_PIXELS):
            for (j, _), made in zip(held, cell_inputs([r for _, r in held], prep)):
                out[j] = made
            held = []
    return out


def _or_error(make):
    try:
        return make()
    except ImageReadError as e:
        return e


def cell_input(rgb: np.ndarray, prep: Preprocess) -> tuple[np.ndarray, bool]:
    """The model input for an RGB array already in memory (uploads, crops from a field)."""
    return cell_inputs([rgb], prep)[0]


def cell_inputs(rgbs: list[np.ndarray], prep: Preprocess) -> list[tuple[np.ndarray, bool]]:
    """`cell_input` of each picture, the finder run on them all as one batch."""
    boxes = find_cell_batch(rgbs, prep.finder) if prep.crop == "cell" else [None] * len(rgbs)
    out = []
    for rgb, box in zip(rgbs, boxes):
        if box is not None:
            rgb = crop_square(rgb, box, prep.context)
        out.append((normalize_stain(square_resize(rgb, prep.size), prep.stain), prep.crop == "none" or box is not None))
    return out
