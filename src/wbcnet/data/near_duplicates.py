"""Near-duplicates: the same cell turned by any angle, mirrored, rescaled or recompressed.

The reference project's split put rotated copies of one cell on both sides, so training keeps
near-duplicate pairs on one side of its split (`near_duplicate_pairs`) and `wbcnet data audit`
reports them within a folder and across two (`match_features` and `find_pairs`, on the thumbnails
it has already decoded). Everything works on THUMB_SIZE px thumbnails; all constants are below.

How pairs are found:

1. Each thumbnail is turned to gray and band-passed (a difference of Gaussians), which keeps the
   edges of nucleus lobes, granules and neighbouring red cells and drops the large light/dark
   gradients that make unrelated images correlate.
2. It is resampled on a polar grid (rings x angles) over a centred disc. A rotation of the image
   is a circular shift along the angle axis, a mirror image a reversal of it, and a rescale a
   stretch of the radius, which we cover by sampling each image at a few radial scales. Every
   ring's mean is subtracted: the radial profile that every centred cell shares would otherwise
   make all cells of a class alike.
3. The score of a pair is the best normalised correlation of these polar images over every
   rotation (all POLAR_ANGLES shifts at once, by FFT), both mirror states and the radial scales.
   Rotated, mirrored, rescaled (up to ~12 %) or recompressed copies score above 0.95; unrelated
   cells stayed at or below 0.51 on the bundled sample (all 44,850 pairs), 0.58 on Raabin-WBC
   and 0.64 on BCCD crops; there, and on Raabin, every pair above ~0.65 that we looked at was
   one cell photographed twice. Hence NEAR_DUPLICATE_MIN_SCORE = 0.75.
4. Scoring all n^2/2 pairs would be slow, so each image is scored only against its
   CANDIDATE_NEIGHBOURS nearest images by a rotation- and mirror-invariant descriptor: the
   magnitudes of the angular Fourier transform of each ring, averaged over the radial scales.
   In validation every copy was its original's nearest or second nearest of 10,000 images.
   A cluster of more than CANDIDATE_NEIGHBOURS copies of one cell can lose some of its pairs
   (each copy is still reported with many of the others).

What it does not catch: copies cropped around a different point (a shift of more than ~1 % of
the width lowers the score below the threshold) or zoomed by more than ~15 %.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .cache import decode_images

# Every image is matched as a thumbnail of this size; the audit reuses the thumbnails for colour.
THUMB_SIZE = 64

# Polar grid: the disc of radius POLAR_RADIUS x half the thumbnail (inside the image after any
# rotation, and at the largest radial scale).
POLAR_RINGS = 16
POLAR_ANGLES = 128                      # rotations tried: one every 2.8 degrees
POLAR_HARMONICS = 40                    # angular frequencies kept per ring
BAND_PASS_SIGMAS = (0.7, 3.0)           # difference of Gaussians, in thumbnail pixels
POLAR_RADIUS = 0.85
RADIAL_SCALES = (1 / 1.12, 1 / 1.06, 1.0, 1.06, 1.12)  # tolerate a zoom of about +-15 % between copies

CANDIDATE_NEIGHBOURS = 20               # each image is scored against its nearest images by descriptor
NEAR_DUPLICATE_MIN_SCORE = 0.75         # best polar correlation of a near-duplicate pair


def near_duplicate_pairs(paths: list[str], workers: int | None = None,
                         progress: bool = True) -> list[tuple[str, str, float]]:
    """(path_a, path_b, score) for every near-duplicate (or byte-identical) pair among `paths`.

    Used by training to keep one cell photographed twice, under two field-of-view names, on one
    side of a split. Unreadable paths are left out silently: the training scan reports them."""
    decoded = decode_images(paths, THUMB_SIZE, workers, "near-duplicate search", progress)
    if len(decoded.index) < 2:
        return []
    features = match_features(decoded.images.transpose(0, 2, 3, 1), progress)
    pairs, scores = find_pairs(features, None, progress)
    index = decoded.index
    return [(paths[index[i]], paths[index[j]], round(float(s), 4))
            for (i, j), s in zip(pairs.tolist(), scores.tolist())]


def settings() -> dict:
    """The constants above, for reports that say how their pairs were found."""
    return {"thumb_size": THUMB_SIZE, "polar_rings": POLAR_RINGS, "polar_angles": POLAR_ANGLES,
            "radial_scales": [round(s, 4) for s in RADIAL_SCALES],
            "band_pass_sigmas": list(BAND_PASS_SIGMAS), "candidate_neighbours": CANDIDATE_NEIGHBOURS,
            "near_duplicate_min_score": NEAR_DUPLICATE_MIN_SCORE}


@dataclass
class MatchFeatures:
    spectra: np.ndarray      # (n, len(RADIAL_SCALES), POLAR_RINGS, POLAR_HARMONICS + 1) complex64
    descriptors: np.ndarray  # (n, D) float32, unit norm: rotation-, mirror- and zoom-tolerant


def match_features(thumbs: np.ndarray, progress: bool, chunk: int = 1024) -> MatchFeatures:
    """Features of (n, THUMB_SIZE, THUMB_SIZE, 3) uint8 thumbnails: the angular spectra of the
    band-passed, ring-mean-removed, unit-norm polar images at each radial scale, and the
    rotation-invariant descriptors for the candidate search.

    Rings are weighted by sqrt(radius): between equal weight per ring (which would let the few
    central pixels count as much as the whole rim) and weight by area. Only the first
    POLAR_HARMONICS angular frequencies are kept (99.9 % of the energy of a band-passed
    64 px thumbnail); the correlation is still evaluated at every one of the POLAR_ANGLES shifts.
    """
    n = len(thumbs)
    spectra = np.zeros((n, len(RADIAL_SCALES), POLAR_RINGS, POLAR_HARMONICS + 1), dtype=np.complex64)
    grids = [_polar_grid(s) for s in RADIAL_SCALES]
    ring_weight = np.sqrt(grids[0][2] / grids[0][2].max()).astype(np.float32)[None, :, None]
    # Parseval for a real signal's rfft: every harmonic but the constant one stands for two.
    harmonic_weight = np.full(POLAR_HARMONICS + 1, 2.0 / POLAR_ANGLES, dtype=np.float32)
    harmonic_weight[0] = 1.0 / POLAR_ANGLES
    for start in tqdm(range(0, n, chunk), desc="matching features", unit="chunk", disable=not progress or n <= chunk,
                      leave=False):
        gray = _band_pass(thumbs[start:start + chunk].astype(np.float32).mean(axis=3) / 255.0)
        for k, (y, x, _) in enumerate(grids):
            polar = _sample_bilinear(gray, y, x)                       # (m, rings, angles)
            polar = (polar - polar.mean(axis=2, keepdims=True)) * ring_weight
            spectrum = np.fft.rfft(polar, axis=2)[:, :, :POLAR_HARMONICS + 1]
            energy = np.sqrt((np.abs(spectrum) ** 2 * harmonic_weight).sum(axis=(1, 2), keepdims=True))
            # A flat image (blank field) has no angular structure: it matches nothing.
            spectra[start:start + chunk, k] = np.divide(spectrum, energy, out=np.zeros_like(spectrum),
                                                        where=energy > 1e-6)
    # Magnitudes ignore rotation and mirroring (they are the scale-1 score's upper bound, by
    # Cauchy-Schwarz term by term); averaging them over the scales makes them tolerate zoom too.
    descriptors = np.abs(spectra).mean(axis=1) * np.sqrt(harmonic_weight)
    descriptors = descriptors.reshape(n, POLAR_RINGS * (POLAR_HARMONICS + 1))
    norms = np.linalg.norm(descriptors, axis=1, keepdims=True)
    descriptors = np.divide(descriptors, norms, out=np.zeros_like(descriptors), where=norms > 0)
    return MatchFeatures(spectra, descriptors.astype(np.float32))


def find_pairs(a: MatchFeatures, b: MatchFeatures | None = None,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pairs scoring at least NEAR_DUPLICATE_MIN_SCORE, as (k, 2) row indices and (k,) scores:
    within `a` when `b` is None (i < j), else between `a` (first column) and `b` (second)."""
    pairs = _candidate_pairs(a.descriptors, None if b is None else b.descriptors)
    scores = _pair_scores(a.spectra, (a if b is None else b).spectra, pairs, progress)
    keep = scores >= NEAR_DUPLICATE_MIN_SCORE
    return pairs[keep], scores[keep]


def _polar_grid(scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampling coordinates (y, x) of the polar grid on a thumbnail, and the radius of each ring."""
    centre = (THUMB_SIZE - 1) / 2
    radii = (np.arange(POLAR_RINGS) + 0.5) / POLAR_RINGS * POLAR_RADIUS * THUMB_SIZE / 2
    angles = np.arange(POLAR_ANGLES) * 2 * np.pi / POLAR_ANGLES
    y = centre + scale * radii[:, None] * np.sin(angles)[None, :]
    x = centre + scale * radii[:, None] * np.cos(angles)[None, :]
    return y, x, radii


def _sample_bilinear(gray: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """gray (m, H, W) sampled at float coordinates y, x (same shape G, inside the image) -> (m, *G)."""
    size = gray.shape[1]
    y0 = np.clip(np.floor(y).astype(np.int64), 0, size - 2)
    x0 = np.clip(np.floor(x).astype(np.int64), 0, size - 2)
    fy, fx = (y - y0).astype(np.float32), (x - x0).astype(np.float32)
    return (gray[:, y0, x0] * (1 - fy) * (1 - fx) + gray[:, y0 + 1, x0] * fy * (1 - fx)
            + gray[:, y0, x0 + 1] * (1 - fy) * fx + gray[:, y0 + 1, x0 + 1] * fy * fx)


def _blur_matrix(sigma: float) -> np.ndarray:
    """(S, S) matrix M such that M @ img @ M.T is a Gaussian blur of an S x S image, edges repeated."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    matrix = np.zeros((THUMB_SIZE, THUMB_SIZE), dtype=np.float32)
    for offset, weight in zip(range(-radius, radius + 1), taps):
        rows = np.arange(THUMB_SIZE)
        np.add.at(matrix, (rows, np.clip(rows + offset, 0, THUMB_SIZE - 1)), weight)
    return matrix


def _band_pass(gray: np.ndarray) -> np.ndarray:
    """Difference of Gaussians: keeps the edges of nucleus lobes, granules and neighbouring red
    cells, which tell one cell from another, and drops the large light/dark gradients (a dark
    neighbour on one side, uneven lighting) that make unrelated images correlate."""
    fine, coarse = _blur_matrix(BAND_PASS_SIGMAS[0]), _blur_matrix(BAND_PASS_SIGMAS[1])
    return fine @ gray @ fine.T - coarse @ gray @ coarse.T


def _nearest(queries: np.ndarray, base: np.ndarray, k: int, exclude_self: bool, block: int = 1024) -> np.ndarray:
    """(i, j) for the k rows j of `base` most similar (dot product) to each row i of `queries`,
    by blocked matrix products: exact, and fast enough for tens of thousands of images."""
    k = min(k, len(base) - (1 if exclude_self else 0))
    if k <= 0 or len(queries) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    found = []
    for start in range(0, len(queries), block):
        sim = queries[start:start + block] @ base.T
        if exclude_self:
            sim[np.arange(len(sim)), start + np.arange(len(sim))] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        found.append(np.stack([np.repeat(np.arange(start, start + len(sim)), k), top.ravel()], axis=1))
    return np.concatenate(found)


def _candidate_pairs(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Unique pairs (i, j) to score: each image with its CANDIDATE_NEIGHBOURS nearest by descriptor.
    Within one set (b is None) as i < j; across two sets from both sides, i indexing a, j b."""
    if b is None:
        pairs = np.sort(_nearest(a, a, CANDIDATE_NEIGHBOURS, exclude_self=True), axis=1)
    else:
        pairs = np.concatenate([_nearest(a, b, CANDIDATE_NEIGHBOURS, exclude_self=False),
                                _nearest(b, a, CANDIDATE_NEIGHBOURS, exclude_self=False)[:, ::-1]])
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _pair_scores(spec_a: np.ndarray, spec_b: np.ndarray, pairs: np.ndarray, progress: bool = False,
                 batch: int = 2048) -> np.ndarray:
    """Best correlation of each pair over all rotations, both mirror states and the radial scales
    of the second image (the first stays at scale 1)."""
    scale_one = RADIAL_SCALES.index(1.0)
    scores = np.empty(len(pairs), dtype=np.float32)
    for start in tqdm(range(0, len(pairs), batch), desc="scoring pairs", unit="batch", leave=False,
                      disable=not progress or len(pairs) <= batch):
        i, j = pairs[start:start + batch, 0], pairs[start:start + batch, 1]
        fa = spec_a[i, scale_one][:, None]           # (m, 1, rings, freq)
        fb = spec_b[j]                               # (m, scales, rings, freq)
        # Cross-correlation over angular shifts is irfft(Fa * conj(Fb)) summed over rings; a mirror
        # image reverses the angle, which conjugates its spectrum: irfft(Fa * Fb).
        turned = np.fft.irfft((fa * np.conj(fb)).sum(axis=2), n=POLAR_ANGLES, axis=-1)
        mirrored = np.fft.irfft((fa * fb).sum(axis=2), n=POLAR_ANGLES, axis=-1)
        scores[start:start + batch] = np.maximum(turned.max(axis=(1, 2)), mirrored.max(axis=(1, 2)))
    return scores
