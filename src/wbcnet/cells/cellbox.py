"""A found white cell (`CellBox`) and the square crop around it, shared by both cell finders."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Crop side = DEFAULT_CONTEXT x the cell's diameter: the whole cell plus a rim of its
# surroundings, so that a cell measured a little small is still whole (docs/locate.png).
DEFAULT_CONTEXT = 1.5
# Padding a lab added around a cell near the field's edge is near black and grey.
_PAD_MAX_VALUE = 50
_PAD_MAX_RANGE = 30


@dataclass(frozen=True)
class CellBox:
    """A white cell in pixel coordinates of the image it was found in (radius: nucleus and
    cytoplasm, not the nucleus alone); `score`: the finder's confidence, where it gives one."""

    cx: float
    cy: float
    radius: float
    score: float = 1.0


@dataclass(frozen=True)
class FieldSearch:
    """What a finder saw in one whole field: the white cells (best first), the candidates it
    looked at and judged not to be white cells (red cells, platelet clumps, stain, dark corners:
    counted apart so a person can check them), and the scale it read: the red cells' diameter
    in the field's pixels, the spread of its reading (interquartile range of the log diameter
    over the field) and whether its looks at the field agreed on the scale."""

    cells: list
    rejected: list
    red_cell_px: float = float("nan")
    scale_spread: float = 0.0
    looks: int = 1
    scale_settled: bool = True


def crop_square(rgb: np.ndarray, box: CellBox, context: float = DEFAULT_CONTEXT,
                fill: str = "plasma") -> np.ndarray:
    """The square of side 2 * box.radius * context centred on the cell.

    Where it runs off the image it is filled with the picture's plasma colour (`fill="plasma"`),
    or by repeating the edge pixels (`fill="edge"`, np.pad's mode). Plasma keeps a cell that is
    cut by the image edge at its size; repeated edges smear it outwards into a bigger blob.
    """
    half = max(1, int(round(box.radius * context)))
    h, w = rgb.shape[:2]
    # Clamp the centre into the image so that some pixels remain to repeat.
    cy, cx = min(max(int(round(box.cy)), 0), h - 1), min(max(int(round(box.cx)), 0), w - 1)
    y0, x0, y1, x1 = cy - half, cx - half, cy + half, cx + half
    inner = rgb[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
    if not any(pad[0] + pad[1]):
        return inner.copy()
    if fill == "edge":
        return np.pad(inner, pad, mode="edge")
    if fill != "plasma":
        raise ValueError(f"fill must be 'plasma' or 'edge', not {fill!r}")
    out = np.empty((2 * half, 2 * half, 3), np.uint8)
    out[...] = plasma_colour(rgb)
    out[pad[0][0]:pad[0][0] + inner.shape[0], pad[1][0]:pad[1][0] + inner.shape[1]] = inner
    return out


def plasma_colour(rgb: np.ndarray) -> np.ndarray:
    """The plasma's RGB: the median colour of the palest tenth of a small copy, padding aside."""
    factor = max(1, -(-max(rgb.shape[:2]) // 32))
    small = Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor) if factor > 1 else rgb
    # Whole numbers throughout, np.ptp's max and min done once each, and the 90th percentile
    # (np.quantile's "nearest": the element at round((n - 1) * 0.9)) by np.partition: the same
    # colour as in floats through np.ptp and np.quantile (a test checks it), 0.46 -> 0.34 ms a
    # 288 px picture, one for each picture the learned finder frames.
    pixels = np.asarray(small, dtype=np.int16).reshape(-1, 3)
    brightest = pixels.max(1)
    pixels = pixels[~((brightest < _PAD_MAX_VALUE) & (brightest - pixels.min(1) < _PAD_MAX_RANGE))]
    if pixels.size == 0:
        return np.zeros(3, np.uint8)
    brightness = pixels.sum(1)
    k = int(np.around((len(brightness) - 1) * 0.9))
    palest = pixels[brightness >= np.partition(brightness, k)[k]]
    return np.median(palest, axis=0).round().astype(np.uint8)
