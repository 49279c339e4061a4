"""Find the white cell in a crop, then crop a square around it at a fixed multiple of its size.

Labs frame cells differently: Raabin-WBC shows a small cell among many red cells, PBC a cell in
the middle of a wider field, BCCD a tight, blurry crop; some labs pad with black where a cell sat
near the edge of the field. Cropping every image to `context` x the cell's diameter brings the
cell to the model at one scale whatever the framing.

No fixed colour rule holds across stains (Raabin's red cells are purple enough to pass for
nucleus under a blue-minus-green threshold), so every threshold here is learnt from the image
itself: the pixels are sorted into background, red cells / cytoplasm and nucleus by a small
k-means on a stain feature, and the cell is measured from the nucleus outwards.

All the work happens on a copy of at most `WORK_SIDE` pixels a side (about 0.5 ms for a 224 px
crop); boxes are returned in the coordinates of the image given.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

# Longest side of the working copy. A nucleus is still 10+ px across at this size in every lab
# we have, and k-means on ~4,000 pixels costs next to nothing.
WORK_SIDE = 64
# Crop side = CONTEXT x cell diameter (see find_cell's users and docs/locate.png).
DEFAULT_CONTEXT = 1.6

# Padding a lab added around a cell near the field's edge: near black and grey. Nucleus is
# never this dark in brightfield, and when it is dark it is strongly purple.
_PAD_MAX_VALUE = 50
_PAD_MAX_RANGE = 30
# The nucleus cluster must stand this far (in optical density, summed over R+G-B) above the
# background, or the image has no stained nucleus at all (a blank field, plasma only).
_MIN_CONTRAST = 0.25
# ... and cover at least this fraction of the working copy (a platelet or dust speck is smaller).
_MIN_NUCLEUS_FRACTION = 0.004
# Smallest colour distance from plasma (optical density) that counts as stained, however
# clean the plasma; JPEG noise in BCCD's plasma alone reaches 0.05.
_MIN_STAIN = 0.07
# Lobes of one neutrophil lie closer than this (working pixels) and are merged into one nucleus.
_LOBE_GAP = 2
_N_RAYS = 32


@dataclass(frozen=True)
class CellBox:
    """A white cell in pixel coordinates of the image it was found in.

    radius is the whole cell's (nucleus and cytoplasm), not the nucleus's.
    """

    cx: float
    cy: float
    radius: float


def _downsample(rgb: np.ndarray, side: int) -> tuple[np.ndarray, int]:
    """Box-average to at most `side` px (PIL's reduce is several times faster than numpy here)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}")
    factor = max(1, -(-max(rgb.shape[:2]) // side))
    small = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor))
    return small.astype(np.float32), factor


def _kmeans_1d(x: np.ndarray, k: int, iters: int = 12) -> np.ndarray:
    """Sorted centres of k clusters of the values x, started from spread-out percentiles."""
    hist, edges = np.histogram(x, bins=128)
    mids = (edges[:-1] + edges[1:]) / 2
    # On a histogram rather than on the pixels: a few hundred operations a step, not thousands.
    centres = np.percentile(x, np.linspace(30, 99, k))
    for _ in range(iters):
        nearest = np.abs(mids[:, None] - centres[None]).argmin(1)
        w = np.bincount(nearest, weights=hist, minlength=k)
        s = np.bincount(nearest, weights=hist * mids, minlength=k)
        centres = np.where(w > 0, s / np.maximum(w, 1e-9), centres)
    return np.sort(centres)


def _stain_maps(small: np.ndarray):
    """Optical density, nucleus-likeness, stained and padding masks of a working copy.

    Returns (od, nucleus_score, stained, padding), or None for an image that is all padding.
    The score is the excess of green absorption over red and blue, relative to the background:
    a nucleus absorbs green far more than anything else on a Romanowsky-stained slide, while
    red cells, even Raabin's dark purple ones, absorb blue and red nearly as much as green.
    `stained` is every pixel whose colour differs from the plasma (cells of all kinds); padding is
    the near-black frame.
    """
    v = small.max(2)
    padding = (v < _PAD_MAX_VALUE) & (v - small.min(2) < _PAD_MAX_RANGE)
    if padding.any():
        # The resampled rim between padding and picture is a dark grey that is neither.
        padding = ndi.binary_dilation(padding, iterations=1)
    inside = ~padding
    if inside.sum() < 16:
        return None
    od = -np.log((small + 1.0) / 256.0)
    # Plasma is the palest tenth of the picture; tight crops still show that much of it, and
    # when they do not, the palest cytoplasm stands in and the cell still outranks it.
    darkness = od.sum(2)
    plasma = inside & (darkness <= np.percentile(darkness[inside], 10))
    od_plasma = np.median(od[plasma], axis=0)
    off_plasma = np.sqrt(((od - od_plasma) ** 2).sum(2))
    # Pale cytoplasm (a neutrophil's in PBC) differs from plasma by a hue shift rather than by
    # darkness, so the test is a colour distance, against the plasma's own spread.
    spread = np.percentile(off_plasma[plasma], 90)
    stained = inside & (off_plasma > max(_MIN_STAIN, 3 * spread))
    score = od[..., 1] - (od[..., 0] + od[..., 2]) / 2
    score = score - np.median(score[plasma])
    return od, score, stained, padding


def _nucleus(score: np.ndarray, padding: np.ndarray):
    """Mask of the nucleus (lobes merged) of the cell nearest the centre, or None."""
    inside = ~padding
    centres = _kmeans_1d(score[inside], 3)
    if centres[-1] < _MIN_CONTRAST:
        return None
    nucleus = (score > (centres[-1] + centres[-2]) / 2) & inside
    # Label on a dilated copy so that a neutrophil's lobes count as one object.
    grouped, n = ndi.label(ndi.binary_dilation(nucleus, iterations=_LOBE_GAP))
    if n == 0:
        return None
    labels = np.where(nucleus, grouped, 0)
    h, w = score.shape
    yy, xx = np.mgrid[0:h, 0:w]
    # Prefer strong, large objects near the middle: a crop is centred on its cell, and a
    # neighbour cut by the edge is both smaller and off-centre.
    d2 = ((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (0.3 * max(h, w)) ** 2
    weight = np.where(nucleus, (score - centres[-2]) * np.exp(-0.5 * d2), 0.0)
    votes = np.bincount(labels.ravel(), weights=weight.ravel(), minlength=n + 1)
    votes[0] = 0
    best = int(votes.argmax())
    mask = labels == best
    if mask.sum() < _MIN_NUCLEUS_FRACTION * inside.sum():
        return None
    return mask


def _cast_rays(cell: np.ndarray, blocked: np.ndarray, cy: float, cx: float):
    """Walk out from (cy, cx) in `_N_RAYS` directions until leaving `cell`.

    Returns (dist, end_y, end_x, cut): how far each ray went, where it stopped, and whether it
    stopped because the picture ended (image edge or padding) rather than the cell, so that its
    distance is only a lower bound.
    """
    h, w = cell.shape
    angles = np.linspace(0, 2 * np.pi, _N_RAYS, endpoint=False)
    steps = np.arange(0, 1.5 * max(h, w), 0.5)
    ys = cy + np.sin(angles)[:, None] * steps[None]
    xs = cx + np.cos(angles)[:, None] * steps[None]
    iy, ix = np.rint(ys).astype(int), np.rint(xs).astype(int)
    on_image = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    iy, ix = np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)
    go_on = on_image & cell[iy, ix] & ~blocked[iy, ix]
    # First step that is not cell (argmin of a boolean finds the first False).
    first_out = np.where(go_on.all(1), steps.size - 1, go_on.argmin(1))
    k = np.arange(_N_RAYS)
    cut = ~on_image[k, first_out] | blocked[iy[k, first_out], ix[k, first_out]]
    return steps[first_out], ys[k, first_out], xs[k, first_out], cut


def _fit_circle(y: np.ndarray, x: np.ndarray):
    """Least-squares circle through points (Kasa's linear fit): (cy, cx, r), or None."""
    a = np.column_stack([x, y, np.ones_like(x)])
    try:
        (d, e, f), *_ = np.linalg.lstsq(a, -(x * x + y * y), rcond=None)
    except np.linalg.LinAlgError:
        return None
    cx, cy = -d / 2, -e / 2
    r2 = cx * cx + cy * cy - f
    return (float(cy), float(cx), float(np.sqrt(r2))) if r2 > 0 else None


def _cell_mask(od: np.ndarray, stained: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """The stained pixels that belong to the white cell rather than to red cells touching it.

    Two colour prototypes learnt from the image: cytoplasm from the stained ring just outside
    the nucleus, red cell from stained pixels far from it. Each stained pixel goes to the nearer.
    """
    far_from_nucleus = ndi.distance_transform_edt(~nucleus)
    ny, nx = np.nonzero(nucleus)
    extent = np.sqrt(nucleus.sum() / np.pi)
    ring = stained & ~nucleus & (far_from_nucleus <= 2)
    far = stained & (far_from_nucleus > 1.5 * extent)
    cell = stained
    if ring.sum() >= 8 and far.sum() >= 8:
        cyto = np.median(od[ring], axis=0)
        rbc = np.median(od[far], axis=0)
        cell = stained & (((od - cyto) ** 2).sum(2) < ((od - rbc) ** 2).sum(2))
    # Close one-pixel gaps (granules, JPEG noise) so that a ray does not stop inside the cell.
    return ndi.binary_fill_holes(ndi.binary_closing(cell | nucleus))


def _measure(small: np.ndarray, debug: dict | None = None):
    """(cy, cx, radius) of the cell nearest the centre of a working copy, or None."""
    maps = _stain_maps(small)
    if maps is None:
        return None
    od, score, stained, padding = maps
    nucleus = _nucleus(score, padding)
    if nucleus is None:
        return None
    cell = _cell_mask(od, stained, nucleus)
    if debug is not None:
        debug.update(stained=stained, nucleus=nucleus, cell=cell, padding=padding)
    cy, cx = ndi.center_of_mass(nucleus)
    # The nucleus's centre is not the cell's (a lymphocyte's or eosinophil's cytoplasm sits to
    # one side): fit a circle to where the rays left the cell, leaving out rays that ran on into
    # a touching red cell or off the picture, and cast again from its centre.
    for _ in range(2):
        dist, ey, ex, cut = _cast_rays(cell, padding, cy, cx)
        keep = ~cut & (dist <= 1.3 * np.median(dist))
        fit = _fit_circle(ey[keep], ex[keep]) if keep.sum() >= _N_RAYS // 3 else None
        if fit is None or np.hypot(fit[0] - cy, fit[1] - cx) > 0.5 * np.median(dist):
            break
        cy, cx = fit[0], fit[1]
    dist, _, _, _ = _cast_rays(cell, padding, cy, cx)
    radius = float(np.median(dist))
    # The cell holds its nucleus whatever the stained mask says (pale cytoplasm, blur).
    ny, nx = np.nonzero(nucleus)
    radius = max(radius, float(np.sqrt(((ny - cy) ** 2 + (nx - cx) ** 2).max())) + 0.5)
    return cy, cx, radius


def find_cell(rgb: np.ndarray) -> CellBox | None:
    """Locate the white cell nearest the middle of an RGB crop.

    Parameters
    ----------
    rgb : HxWx3 uint8 array, any size.

    Returns
    -------
    CellBox in `rgb`'s pixel coordinates, or None when no stained nucleus stands out.
    """
    small, factor = _downsample(rgb, WORK_SIDE)
    found = _measure(small)
    if found is None:
        return None
    cy, cx, radius = found
    # A working pixel i covers original pixels [i*factor, (i+1)*factor).
    return CellBox(cx=(cx + 0.5) * factor - 0.5, cy=(cy + 0.5) * factor - 0.5, radius=radius * factor)


def crop_square(rgb: np.ndarray, box: CellBox, context: float = DEFAULT_CONTEXT) -> np.ndarray:
    """Square of side 2 * box.radius * context centred on the cell, edges repeated where it
    leaves the image.
    """
    half = max(1, int(round(box.radius * context)))
    cy, cx = int(round(box.cy)), int(round(box.cx))
    y0, x0, y1, x1 = cy - half, cx - half, cy + half, cx + half
    h, w = rgb.shape[:2]
    pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
    inner = rgb[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    return np.pad(inner, pad, mode="edge") if any(p != (0, 0) for p in pad[:2]) else inner.copy()
