"""Stain normalisation: every image redrawn with one reference nucleus stain.

Labs stain with different Romanowsky mixes and times (Giemsa, May-Gruenwald-Giemsa, Wright) and
light them differently. Measured on 200 cell crops of each lab (optical density, OD, against the
picture's own plasma; the darkest 8% of pixels, which are nucleus or dark granules;
`python scripts/stain_reference.py`):

    lab         plasma RGB      nucleus OD direction   nucleus OD size
    Raabin-WBC  222 189 178     0.32 0.93  0.20        2.63   magenta
    PBC         255 229 203     0.50 0.85  0.18        2.54   blue-violet
    BCCD        205 206 202     0.50 0.86 -0.06        0.87   pale blue-violet

A model trained on one of them learns its nucleus colour and its contrast; a per-channel
standardisation of the RGB values cannot turn magenta into violet. Here each image is moved, in OD
space, by the one rotation that takes its nucleus direction onto the reference direction and
the one scale that gives its nucleus the reference density, and is redrawn on the reference
plasma. Every colour moves with the nucleus, so what tells the classes apart within one lab
(eosinophil granules against neutrophil cytoplasm, a basophil's darker granules) keeps its place
relative to the nucleus. Stain-vector methods such as Macenko's, tried first, split BCCD's blurred
cells wrongly and turned their plasma magenta. The known weakness: where granules are among the
darkest pixels (PBC's eosinophils), the "nucleus" measured is partly granules and the rotation is
off; models from one lab gain on BCCD with it but not on the other home lab
(benchmarks/results/ablation.md).

It runs on the model-size crop (about 1 ms at 112 px), after the cell crop, in training
(into the decode cache) and at inference alike: it is part of a checkpoint's preprocessing.
"""
from __future__ import annotations

import numpy as np

STAINS = ("none", "nucleus")

# The reference: Raabin-WBC's medians, so the home lab's cells change least. Measured first on the
# packed WebP crops (scripts/pack_crops.py); scripts/stain_reference.py on the JPEGs gives the
# same within 0.01 (0.85 2.43 0.53). Kept as first measured: models were trained with it.
REF_PLASMA = np.array([222.0, 189.0, 178.0])
REF_NUCLEUS = np.array([0.84, 2.43, 0.54])      # OD; direction 0.32 0.93 0.20, size 2.63
_NUCLEUS_SHARE = 0.08                           # the darkest pixels that stand for the nucleus
_SCALE_RANGE = (0.4, 4.0)                       # a density scale outside this is a failed estimate


def _rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a onto unit vector b (Rodrigues)."""
    v = np.cross(a, b)
    s2, c = float(v @ v), float(a @ b)
    if s2 < 1e-12:
        return np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * ((1 - c) / s2)


def _top(values: np.ndarray, share: float) -> np.ndarray:
    """Indices of the largest `share` of `values` (a partial sort: a percentile sorts them all)."""
    k = max(1, int(len(values) * share))
    return np.argpartition(values, len(values) - k)[-k:]


def measure(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(plasma RGB, every pixel's OD against it (H*W x 3), the nucleus OD): the brightest 10% of
    pixels stand for the plasma, the median OD of the darkest 8% for the nucleus."""
    px = rgb.reshape(-1, 3).astype(np.float32)
    plasma = np.median(px[_top(px.sum(1), 0.10)], axis=0)
    od = np.log((plasma + 1) / (px + 1))
    nucleus = np.median(od[_top(np.einsum("ij,ij->i", od, od), _NUCLEUS_SHARE)], axis=0)
    return plasma, od, nucleus


def normalize_stain(rgb: np.ndarray, method: str = "nucleus") -> np.ndarray:
    """uint8 H x W x 3 -> the same picture in the reference stain (unchanged where it can't tell)."""
    if method == "none":
        return rgb
    _, od, nucleus = measure(rgb)
    n = float(np.linalg.norm(nucleus))
    if n < 0.1:
        return rgb  # no stain to measure: a blank or washed-out picture
    ref = float(np.linalg.norm(REF_NUCLEUS))
    scale = ref / n
    if not (_SCALE_RANGE[0] <= scale <= _SCALE_RANGE[1]):
        return rgb
    m = scale * _rotation(nucleus / n, REF_NUCLEUS / ref)
    out = (REF_PLASMA + 1) * np.exp(-(od @ m.T)) - 1
    return np.clip(out, 0, 255).round().astype(np.uint8).reshape(rgb.shape)
