"""The threshold cell finder (wbcnet before the learned one; `--finder classic`).

It is kept because it makes the single-cell training boxes of the learned finder (training/finder.py)
and as the baseline the learned finder is measured against. It fails on labs paler than the
three it was tuned on (issue 18: 4 of 508 white cells found on one such lab's fields).


Labs frame cells differently: Raabin-WBC and PBC show a cell of about a third of the picture
among red cells, BCCD a tight, blurry crop; some labs pad with black where a cell sat near the
edge of the field. Cropping every image to `context` x the cell's diameter brings the cell to the
model at one scale whatever the framing.

No fixed colour rule holds across labs (Raabin's red cells are dark and purple enough to pass
for nucleus under a blue-minus-green threshold), so every threshold is learnt from the image:
a 1-D k-means on a stain feature sorts its pixels into plasma, red cells / cytoplasm and nucleus;
the nucleus nearest the middle, lobes merged, seeds the cell; rays from it to the edge of the
stained, not-red-cell region around it give the cell's centre and radius.

All the work is done on a box-averaged copy of at most WORK_SIDE pixels a side (about a
millisecond a crop) and boxes come back in the coordinates of the image given.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from .cellbox import CellBox

# Longest side of the working copy of a single-cell crop. A lymphocyte's nucleus is still about
# 10 px across at this size in every lab we have.
WORK_SIDE = 64
# ... and of a whole smear field, at the coarsest (BCCD's 640x480 fields: a white cell is then
# ~25 px across). Fields at a lower magnification get a finer working copy (see find_cells).
FIELD_WORK_SIDE = 128
# The working copy of a field is made fine enough that a red cell is at least this many pixels
# across, whatever the microscope's magnification and the camera's resolution.
_FIELD_RBC_WORK = 20
# A stained speck under this share of a red cell's area is never a nucleus (the share of the
# largest nucleus, _MIN_FIELD_NUCLEUS_SHARE, is what keeps platelet clumps out; a higher floor
# here lost lymphocytes where the red-cell estimate ran large).
_MIN_FIELD_NUCLEUS_OF_RBC = 0.05

# A nucleus under this equivalent radius in the working copy is looked at again, through a
# window of _CLOSER_WINDOW nucleus radii either side of it (a cell is at most ~2.5 of them).
_MIN_WORK_NUCLEUS = 4.5
_CLOSER_WINDOW = 5.0
# Padding a lab added around a cell near the field's edge is near black and grey. Stained
# nucleus is never this dark in brightfield, and when it is dark it is strongly purple.
_PAD_MAX_VALUE = 50
_PAD_MAX_RANGE = 30
# The nucleus cluster must absorb green this much more than plasma does (optical density), or
# the picture holds no white cell (plasma only; red cells alone reach ~0.15). In a whole field
# the nuclei are a few percent of the pixels and their cluster centre sinks towards the red
# cells', so the bar is lower there (BCCD's blurry fields: nuclei ~0.3, red cells ~0.1).
_MIN_CONTRAST = 0.25
_MIN_FIELD_CONTRAST = 0.15
# ... and cover this fraction of the picture's working copy (a platelet or dust speck is smaller).
_MIN_NUCLEUS_FRACTION = 0.004
# In a field, a nucleus this much smaller than the largest one is a platelet clump or a fragment.
# A small lymphocyte's nucleus is ~0.23 of a large neutrophil's (BCCD), so a wider field holding
# both needs a bar below that; 0.15 cost BCCD's one-cell fields 0.018 of precision, mostly
# unboxed cells cut by the edge (python -m benchmarks.count_fields).
_MIN_FIELD_NUCLEUS_SHARE = 0.15
# Colour distance from plasma (optical density) below which a pixel counts as plasma however
# clean the plasma is; JPEG noise in BCCD's plasma alone reaches 0.05.
_MIN_STAIN = 0.07
# Lobes of one neutrophil lie closer than twice this (working pixels) and count as one nucleus.
_LOBE_GAP = 2
# The tighter the framing, the further apart lobes lie in working pixels: pieces within this many
# nucleus radii of the nucleus may be lobes of it too (see _with_lobes).
_LOBE_REACH = 1.2
# Cytoplasm and red cell prototypes closer than this (relative to the red cells' distance from
# plasma) are one colour: a Raabin lymphocyte's rim of cytoplasm among dark touching red cells.
_MIN_CYTO_CONTRAST = 0.12
# ... and then the cell is taken as the nucleus grown by this fraction of its reach.
_RIM = 0.15
_N_RAYS = 32
# Rays that run into a touching red cell only ever come out long, so the cell's radius is taken
# low in the rays' spread rather than at the median (Raabin's lymphocytes sit among red cells).
_EDGE_QUANTILE = 0.3
# The cell is at least its nucleus and at most this much wider: a few cells with a wide pale
# cytoplasm (PBC neutrophils, Raabin monocytes) reach 1.9, but a cap this low stops touching
# red cells that pass for cytoplasm from doubling the circle (context 1.5 still holds the cell).
_MAX_CELL_OVER_NUCLEUS = 1.6


def find_cell(rgb: np.ndarray) -> CellBox | None:
    """Locate the white cell nearest the middle of a single-cell crop.

    Parameters
    ----------
    rgb : HxWx3 uint8 array, any size.

    Returns
    -------
    CellBox in `rgb`'s pixel coordinates, or None when no stained nucleus stands out.
    """
    found = _find_central(rgb)
    if found is None:
        return None
    box, nucleus_radius, factor = found
    if nucleus_radius >= _MIN_WORK_NUCLEUS * factor or factor == 1:
        return box
    # The nucleus is a few pixels in the working copy (a wide field, a big padded frame): too few
    # to tell cytoplasm from a touching red cell, so look again through a window around it.
    half = int(np.ceil(_CLOSER_WINDOW * nucleus_radius))
    y0, x0 = max(0, int(box.cy) - half), max(0, int(box.cx) - half)
    closer = _find_central(rgb[y0:int(box.cy) + half, x0:int(box.cx) + half])
    if closer is None:
        return box
    box = closer[0]
    return CellBox(cx=box.cx + x0, cy=box.cy + y0, radius=box.radius)


def _find_central(rgb: np.ndarray) -> tuple[CellBox, float, int] | None:
    """find_cell's pass over a working copy of all of `rgb`: (box, the nucleus's equivalent
    radius in `rgb`'s pixels, the working copy's reduction factor), or None."""
    small, factor = _downsample(rgb, WORK_SIDE)
    maps = _stain_maps(small, _MIN_CONTRAST)
    if maps is None:
        return None
    labels, n = _nucleus_labels(maps)
    if n == 0:
        return None
    h, w = labels.shape
    # Vote for the strong, large nucleus near the middle: a crop is centred on its cell, and a
    # neighbour cut by the edge is both smaller and off-centre. Padded crops are off-centre too,
    # hence a wide vote rather than "the one at the centre".
    spread = 2 * (0.3 * max(h, w)) ** 2
    near = np.outer(np.exp(-(np.arange(h) - (h - 1) / 2) ** 2 / spread),
                    np.exp(-(np.arange(w) - (w - 1) / 2) ** 2 / spread))
    votes = np.bincount(labels.ravel(), weights=(maps.score * near).ravel(), minlength=n + 1)
    votes[0] = -np.inf
    nucleus = _with_lobes(maps, labels, labels == int(votes.argmax()))
    if nucleus.sum() < _MIN_NUCLEUS_FRACTION * (~maps.padding).sum():
        return None
    return _to_box(_measure(maps, nucleus), factor), float(np.sqrt(nucleus.sum() / np.pi)) * factor, factor


def find_cells(field_rgb: np.ndarray) -> list[CellBox]:
    """Locate every white cell in a whole smear field, largest first.

    Parameters
    ----------
    field_rgb : HxWx3 uint8 array of any size and magnification (e.g. a 640x480 BCCD field).

    Returns
    -------
    CellBoxes in `field_rgb`'s pixel coordinates; empty when none stands out.
    """
    rbc = red_cell_diameter(field_rgb)
    # The scale comes from the red cells, not from pixel sizes: at a lower magnification the
    # cells are smaller and the working copy finer, so a white cell keeps its size in it.
    factor = _factor_for(field_rgb, FIELD_WORK_SIDE)
    if rbc is not None:
        factor = max(1, min(factor, int(rbc / _FIELD_RBC_WORK)))
    small = _reduce(field_rgb, factor)
    maps = _stain_maps(small, _MIN_FIELD_CONTRAST)
    if maps is None:
        return []
    labels, n = _nucleus_labels(maps)
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    areas[0] = 0
    # Too small to be a nucleus: a share of a red cell where their size is known, else of the field.
    small_floor = (_MIN_FIELD_NUCLEUS_OF_RBC * np.pi / 4 * (rbc / factor) ** 2 if rbc is not None
                   else _MIN_NUCLEUS_FRACTION / 4 * labels.size)
    floor = max(small_floor, _MIN_FIELD_NUCLEUS_SHARE * areas.max())
    boxes: list[CellBox] = []
    for k in np.argsort(-areas):
        if areas[k] < floor:
            break
        box = _to_box(_measure(maps, labels == k), factor)
        # A nucleus split in two by the threshold must not give the same cell twice.
        if all(np.hypot(box.cx - b.cx, box.cy - b.cy) > b.radius for b in boxes):
            boxes.append(box)
    return boxes


def red_cell_diameter(field_rgb: np.ndarray, work_side: int = 256) -> float | None:
    """The typical size of the red cells in a field, in its pixels: the field's own ruler.

    It is the first dip of the radially averaged autocorrelation of the stained (not plasma)
    mask: stained pixels one cell-width apart fall into the gaps between packed red cells.
    It scales exactly with the picture and varies about 1.8x between BCCD fields of one
    microscope (crowding), which is close enough to choose a working resolution.
    None when the field has too little stain to measure.
    """
    small, factor = _downsample(field_rgb, work_side)
    maps = _stain_maps(small, 0.0)
    if maps is None:
        return None
    m = (maps.stained & ~maps.padding).astype(np.float32)
    if not 0.05 < m.mean() < 0.95:
        return None
    m -= m.mean()
    spectrum = np.fft.rfft2(m)
    ac = np.fft.irfft2(spectrum.real ** 2 + spectrum.imag ** 2, s=m.shape)
    h, w = m.shape
    dy = np.minimum(np.arange(h), h - np.arange(h))[:, None]
    dx = np.minimum(np.arange(w), w - np.arange(w))[None, :]
    r = np.rint(np.sqrt(dy * dy + dx * dx)).astype(np.intp).ravel()
    profile = np.bincount(r, ac.ravel()) / np.maximum(np.bincount(r), 1)
    dips = np.nonzero((profile[2:-1] < profile[1:-2]) & (profile[2:-1] <= profile[3:]))[0]
    dips = dips[dips + 2 < min(h, w) // 2]
    return None if dips.size == 0 else float((dips[0] + 2) * factor)


# --- the steps, in the order they run ---------------------------------------------------------

def _downsample(rgb: np.ndarray, side: int) -> tuple[np.ndarray, int]:
    """Box-average to at most `side` px a side; returns (working copy, reduction factor)."""
    factor = _factor_for(rgb, side)
    return _reduce(rgb, factor), factor


def _factor_for(rgb: np.ndarray, side: int) -> int:
    """The smallest whole reduction that brings `rgb` to at most `side` px a side."""
    return max(1, -(-max(rgb.shape[:2]) // side))


def _reduce(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Box-average by `factor` (PIL's reduce: ~10x faster than numpy here), as float32."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}")
    small = Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor) if factor > 1 else rgb
    return np.asarray(small, dtype=np.float32)


@dataclass(frozen=True)
class _Maps:
    od: np.ndarray         # 3xHxW optical density, one plane a channel
    od_plasma: np.ndarray  # 3x1x1 the plasma's
    score: np.ndarray      # nucleus-likeness, relative to plasma
    nuclear: np.ndarray    # score above the nucleus cluster's threshold: nuclei of any cell
    stained: np.ndarray    # colour differs from plasma: cells of any kind
    padding: np.ndarray    # the near-black frame some labs add


def _stain_maps(small: np.ndarray, min_contrast: float) -> _Maps | None:
    """Per-pixel maps of a working copy; None when there is no stained nucleus or no picture.

    The nucleus score is the excess of green absorption over red and blue: nucleus absorbs green
    far more than anything else on a Romanowsky-stained slide, while red cells, even Raabin's
    dark purple ones, absorb blue and red nearly as much as green.
    """
    # Channel planes: numpy reduces over a last axis of length 3 slowly, over planes fast.
    r, g, b = np.ascontiguousarray(small.transpose(2, 0, 1))
    v = np.maximum(np.maximum(r, g), b)
    padding = (v < _PAD_MAX_VALUE) & (v - np.minimum(np.minimum(r, g), b) < _PAD_MAX_RANGE)
    if padding.any():
        # The resampled rim between padding and picture is a dark grey that is neither.
        padding = _grow(padding, 1)
    inside = ~padding
    if inside.sum() < 64:
        return None
    od = -np.log((np.stack([r, g, b]) + 1.0) / 256.0)
    # Plasma is the palest tenth of the picture. Tight crops still show that much of it; when
    # they do not, the palest cytoplasm stands in, and the nucleus still outranks it.
    darkness = od[0] + od[1] + od[2]
    plasma = inside & (darkness <= _quantile(darkness[inside], 0.10))
    od_plasma = _channel_medians(od, plasma)
    # Pale cytoplasm (a PBC neutrophil's) differs from plasma by hue more than by darkness, hence
    # a colour distance, measured against the plasma's own spread.
    off_plasma = np.sqrt(((od - od_plasma) ** 2).sum(0))
    stained = inside & (off_plasma > max(_MIN_STAIN, 3 * _quantile(off_plasma[plasma], 0.9)))
    score = od[1] - (od[0] + od[2]) / 2
    score -= _quantile(score[plasma], 0.5)
    # Three clusters of the score: plasma, red cells and cytoplasm, nucleus.
    centres = _kmeans_1d(score[inside], 3)
    if centres[-1] < min_contrast:
        return None
    nuclear = (score > (centres[-1] + centres[-2]) / 2) & inside
    return _Maps(od, od_plasma, score, nuclear, stained, padding)


def _nucleus_labels(maps: _Maps) -> tuple[np.ndarray, int]:
    """Label image of the nuclei, each neutrophil's lobes under one label."""
    # Label a grown copy so that lobes a thin strand apart join, then keep only true pixels.
    grouped, n = ndi.label(_grow(maps.nuclear, _LOBE_GAP))
    return np.where(maps.nuclear, grouped, 0), n


def _with_lobes(maps: _Maps, labels: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """`nucleus` plus the other lobes of its cell.

    The tighter the framing, the further apart a neutrophil's lobes lie in working pixels, so
    the reach scales with the nucleus's size. A neighbour's nucleus is told apart as best we
    can: a lobe is between a quarter and twice the size of the first, stays clear of the
    picture's edge (a neighbour in a single-cell crop is usually cut by it) and is joined to the
    first by stain, not across plasma.
    """
    area = nucleus.sum()
    reach = max(_LOBE_GAP, int(round(_LOBE_REACH * np.sqrt(area / np.pi))))
    body, _ = ndi.label(maps.stained | maps.nuclear)
    n = labels.max()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    ok = (sizes >= area / 4) & (sizes <= 2 * area)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        ok[edge] = False
    ok[np.unique(labels[body != np.bincount(body[nucleus]).argmax()])] = False
    ok[0] = False
    near = np.unique(labels[_grow(nucleus, reach)])
    near = near[ok[near]]
    return nucleus | np.isin(labels, near) if near.size else nucleus


def _measure(maps: _Maps, nucleus: np.ndarray) -> tuple[float, float, float]:
    """(cy, cx, radius) of the cell around `nucleus`, in working pixels."""
    cell = _cell_mask(maps, nucleus)
    ny, nx = np.nonzero(nucleus)
    cy, cx = ny.mean(), nx.mean()
    # Rays need not go further than the largest radius we would accept (see below).
    longest = _MAX_CELL_OVER_NUCLEUS * (np.sqrt(((ny - cy) ** 2 + (nx - cx) ** 2).max()) + 1) + 2
    # The nucleus's centre is not the cell's (an eosinophil's or a lymphocyte's cytoplasm sits to
    # one side): fit a circle to where the rays left the cell, leaving out rays that ran on into
    # a touching red cell or off the picture, and cast again from its centre.
    for _ in range(2):
        dist, ey, ex, cut = _cast_rays(cell, maps.padding, cy, cx, longest)
        keep = ~cut & (dist <= 1.3 * np.quantile(dist, _EDGE_QUANTILE))
        fit = _fit_circle(ey[keep], ex[keep]) if keep.sum() >= _N_RAYS // 3 else None
        if fit is None or np.hypot(fit[0] - cy, fit[1] - cx) > 0.5 * np.median(dist):
            break
        cy, cx = fit
    dist, _, _, _ = _cast_rays(cell, maps.padding, cy, cx, longest)
    # Whatever the stained mask says (pale cytoplasm, blur, touching red cells), the cell holds
    # its nucleus and is not much wider. A quantile, so one stray pixel does not count.
    reach = float(np.sqrt(_quantile((ny - cy) ** 2 + (nx - cx) ** 2, 0.98))) + 0.5
    radius = min(max(float(np.quantile(dist, _EDGE_QUANTILE)), reach), _MAX_CELL_OVER_NUCLEUS * reach)
    return float(cy), float(cx), radius


def _cell_mask(maps: _Maps, nucleus: np.ndarray) -> np.ndarray:
    """The stained pixels that belong to the white cell rather than to red cells touching it.

    Two colour prototypes learnt from the image: cytoplasm from the stained ring just outside the
    nucleus, red cell from stained pixels well away from it; each stained pixel goes to the
    nearer. Where the red cells cannot be sampled (a crop that is all cell) or look like the
    cytoplasm (a thin rim of it between touching red cells), the cell is the nucleus and a rim.
    """
    od, stained = maps.od, maps.stained
    # The ring skips the pixel next to the nucleus, whose colour is half nucleus.
    ring = stained & _grow(nucleus, 3) & ~_grow(maps.nuclear, 1)
    ny, nx = np.nonzero(nucleus)
    h, w = nucleus.shape
    yy, xx = np.ogrid[0:h, 0:w]
    reach = np.sqrt(((ny - ny.mean()) ** 2 + (nx - nx.mean()) ** 2).max())
    far = stained & ((yy - ny.mean()) ** 2 + (xx - nx.mean()) ** 2 > (reach + np.sqrt(ny.size / np.pi)) ** 2)
    # Without red cells to compare with, or with cytoplasm of their colour, only the nucleus and
    # a rim of cytoplasm the width lymphocytes have can be vouched for.
    if far.sum() < 8:
        return _fill_holes(_grow(nucleus, max(1, int(round(_RIM * reach)))))
    cell = stained
    if ring.sum() >= 8:
        cyto, rbc = _channel_medians(od, ring), _channel_medians(od, far)
        if np.linalg.norm(cyto - rbc) < _MIN_CYTO_CONTRAST * np.linalg.norm(rbc - maps.od_plasma):
            return _fill_holes(_grow(nucleus, max(1, int(round(_RIM * reach)))))
        cell = stained & (((od - cyto) ** 2).sum(0) < ((od - rbc) ** 2).sum(0))
    # Close one-pixel gaps (granules, JPEG noise) so that a ray does not stop inside the cell.
    cell = ~_grow(~_grow(cell | nucleus, 1), 1)
    return _fill_holes(cell | nucleus)


def _cast_rays(cell: np.ndarray, blocked: np.ndarray, cy: float, cx: float, longest: float):
    """Walk out from (cy, cx) in _N_RAYS directions until leaving `cell`, at most `longest`.

    Returns (dist, end_y, end_x, cut): how far each ray went, where it stopped, and whether it
    stopped because the picture ended (image edge or padding) rather than the cell, so that its
    distance is only a lower bound.
    """
    h, w = cell.shape
    angles = np.linspace(0, 2 * np.pi, _N_RAYS, endpoint=False)
    steps = np.arange(0, longest, 0.5)
    ys = cy + np.sin(angles)[:, None] * steps[None]
    xs = cx + np.cos(angles)[:, None] * steps[None]
    iy, ix = np.rint(ys).astype(np.intp), np.rint(xs).astype(np.intp)
    on_image = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    iy, ix = np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)
    go_on = on_image & cell[iy, ix] & ~blocked[iy, ix]
    # The first step out of the cell (argmin of a boolean finds the first False).
    first_out = np.where(go_on.all(1), steps.size - 1, go_on.argmin(1))
    k = np.arange(_N_RAYS)
    cut = ~on_image[k, first_out] | blocked[iy[k, first_out], ix[k, first_out]]
    return steps[first_out], ys[k, first_out], xs[k, first_out], cut


def _fit_circle(y: np.ndarray, x: np.ndarray) -> tuple[float, float] | None:
    """Centre (cy, cx) of the least-squares circle through the points (Kasa's linear fit)."""
    a = np.column_stack([x, y, np.ones_like(x)])
    # Normal equations: a 3x3 solve costs a tenth of lstsq's SVD.
    try:
        d, e, f = np.linalg.solve(a.T @ a, a.T @ -(x * x + y * y))
    except np.linalg.LinAlgError:  # points on a line
        return None
    if d * d / 4 + e * e / 4 - f <= 0:
        return None
    return float(-e / 2), float(-d / 2)


def _to_box(found: tuple[float, float, float], factor: int) -> CellBox:
    """Working pixels to the original's: working pixel i covers [i * factor, (i + 1) * factor)."""
    cy, cx, radius = found
    return CellBox(cx=(cx + 0.5) * factor - 0.5, cy=(cy + 0.5) * factor - 0.5, radius=radius * factor)


# --- small fast helpers (scipy's general versions cost more than all the rest) ----------------

def _kmeans_1d(x: np.ndarray, k: int, iters: int = 20) -> np.ndarray:
    """Sorted centres of k clusters of the values x, run on a 128-bin histogram of them.

    In one dimension a cluster is a run of bins between midpoints of the centres, so a step is
    a few look-ups in cumulative sums rather than a distance matrix.
    """
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-6:
        return np.full(k, lo)
    bins = np.minimum(((x - lo) * (128 / (hi - lo))).astype(np.intp), 127)
    hist = np.bincount(bins, minlength=128).astype(np.float64)
    mids = lo + (np.arange(128) + 0.5) * ((hi - lo) / 128)
    count = np.concatenate([[0.0], np.cumsum(hist)])
    mass = np.concatenate([[0.0], np.cumsum(hist * mids)])
    # Start from spread-out quantiles, the top one high enough to sit in a small nucleus.
    centres = mids[np.minimum(np.searchsorted(count[1:] / count[-1], np.linspace(0.3, 0.99, k)), 127)]
    for _ in range(iters):
        cuts = np.concatenate([[0], np.searchsorted(mids, (centres[1:] + centres[:-1]) / 2), [128]])
        n, m = np.diff(count[cuts]), np.diff(mass[cuts])
        new = np.where(n > 0, m / np.maximum(n, 1e-12), centres)
        if np.abs(new - centres).max() < 1e-9:
            break
        centres = np.sort(new)
    return centres


def _channel_medians(planes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median of each plane over `mask`, shaped (C, 1, 1) to broadcast against the planes."""
    return np.array([_quantile(p[mask], 0.5) for p in planes])[:, None, None]


def _quantile(x: np.ndarray, q: float) -> float:
    """np.quantile's nearest-rank value by partition: a fraction of its cost on small arrays."""
    x = x.ravel()
    i = min(x.size - 1, int(q * (x.size - 1) + 0.5))
    return float(np.partition(x, i)[i])


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """Dilate by `steps` pixels with a 4-neighbour cross."""
    out = mask.copy()
    for _ in range(steps):
        prev = out.copy()
        out[1:] |= prev[:-1]
        out[:-1] |= prev[1:]
        out[:, 1:] |= prev[:, :-1]
        out[:, :-1] |= prev[:, 1:]
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` plus every region of ~mask that does not reach the border."""
    holes, n = ndi.label(~mask)
    if n == 0:
        return mask
    outside = np.zeros(n + 1, bool)
    for edge in (holes[0], holes[-1], holes[:, 0], holes[:, -1]):
        outside[edge] = True
    outside[0] = True
    return ~outside[holes] | mask
