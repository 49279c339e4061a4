"""Dataset audit: what is in a folder of cell images before anyone trains on it.

`run_audit(root)` reads every image once (a file hash, its header, and a 64 px thumbnail through
`load_rgb`) and reports:

* class counts and imbalance;
* unreadable files (with `load_rgb`'s reason) and files the scan skipped;
* image sizes, modes and formats as stored on disk;
* exact duplicates (same file bytes) and near-duplicates: the same cell turned by any angle,
  mirrored, rescaled or recompressed. The reference project's split put rotated copies of one cell
  on both sides, so near-duplicates are searched within the folder and, with `against`, across
  two folders (train vs test);
* per-class colour statistics, and a warning when the colour of a class's *background* (the
  brightest pixels: plasma and red cells, not the white cell itself) is distinctive enough that a
  model could recognise the class from the stain or the camera rather than from the cell.

render/audit.py shows the result: `format_table(result)` for a terminal, `write_audit(result, out_dir)`
`audit.json` and a self-contained `audit.html`.

Near-duplicates are found by `data/near_duplicates.py` (which training uses too), on the
thumbnails read here; its docstring says how, and what it does not catch.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.imageio import ImageReadError, image_info, load_rgb
from . import near_duplicates
from .cache import default_workers
# Re-exported for training/classifier.py, which imports it from here until it switches to data.near_duplicates.
from .near_duplicates import NEAR_DUPLICATE_MIN_SCORE, THUMB_SIZE, MatchFeatures, near_duplicate_pairs
from .scan import scan

# Colour shortcut test: the background is the brightest BACKGROUND_FRACTION of each thumbnail.
BACKGROUND_FRACTION = 0.30
SHORTCUT_MIN_AUC = 0.90                 # cross-validated one-vs-rest AUC from background colour alone
SHORTCUT_MIN_EFFECT = 1.5               # fallback for classes too small to cross-validate
SHORTCUT_MIN_IMAGES = 10                # per side, to cross-validate an AUC
SHORTCUT_CRITERION = (
    f"A class is flagged when a logistic regression on the mean R, G, B of each image's background "
    f"(its brightest {BACKGROUND_FRACTION:.0%} of pixels: plasma and red cells, not the white cell) tells it "
    f"from the other classes with a cross-validated AUC >= {SHORTCUT_MIN_AUC:.2f}; for a class with fewer "
    f"than {SHORTCUT_MIN_IMAGES} images, when the background's standardized mean difference from the rest "
    f"(Cohen's d, in units of the pooled per-image std) reaches {SHORTCUT_MIN_EFFECT} on R, G or B."
)



# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def run_audit(root, against=None, workers: int | None = None, progress: bool = True) -> dict:
    """Audit the dataset at `root` (an ImageFolder or a CSV manifest, as `scan` reads it).

    against:  a second dataset (e.g. the test set when `root` is the training set); adds the exact
              and near-duplicates across the two, and a short summary of it.
    workers:  threads that read images (default: the usable cores, at most 8).
    progress: show tqdm progress bars.

    Returns a JSON-serialisable dict; render/audit.py shows it. Unreadable images are reported,
    never raised.
    """
    started = time.perf_counter()
    main = _read_dataset(root, workers, progress, desc="reading")
    result = {
        "root": str(root),
        "classes": main.classes,
        "n_files": len(main.paths) + len(main.skipped),
        "n_images": int(main.ok.sum()),
        **_class_balance(main),
        "missing_classes": main.missing_classes,
        "unknown_folders": main.unknown_folders,
        "unreadable": [{"path": p, "reason": r} for p, r in main.errors],
        "skipped": [{"path": p, "reason": r} for p, r in main.skipped],
        **_sizes_and_modes(main),
        "exact_duplicates": _exact_duplicates_within(main),
    }
    main_features = near_duplicates.match_features(main.thumbs, progress)
    result["near_duplicates"] = _near_duplicates(main, main_features, None, None, progress)
    result["near_duplicate_summary"] = _pair_summary(result["near_duplicates"])
    result["colour"] = _colour_audit(main)
    result["against"] = None
    if against is not None:
        other = _read_dataset(against, workers, progress, desc="reading --against")
        other_features = near_duplicates.match_features(other.thumbs, progress)
        near = _near_duplicates(main, main_features, other, other_features, progress)
        result["against"] = {
            "root": str(against),
            "classes": other.classes,
            "n_images": int(other.ok.sum()),
            "class_counts": _class_balance(other)["class_counts"],
            "unreadable": [{"path": p, "reason": r} for p, r in other.errors],
            "exact_duplicates": _exact_duplicates_across(main, other),
            "near_duplicates": near,
            "near_duplicate_summary": _pair_summary(near),
        }
    result["settings"] = {**near_duplicates.settings(), "shortcut_criterion": SHORTCUT_CRITERION}
    result["warnings"] = _warnings(result)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

@dataclass
class _Dataset:
    """One pass over a dataset; rows of `thumbs` are the readable images (`ok`), in path order."""
    classes: list[str]
    paths: list[str]
    labels: np.ndarray          # (n,) class index per path
    groups: list[str]           # field of view per path
    sha1: list[str | None]      # None when the file could not be read at all
    headers: list[tuple | None]  # (width, height, mode, format) as stored, None when PIL cannot open it
    ok: np.ndarray              # (n,) bool: load_rgb succeeded
    thumbs: np.ndarray          # (n_ok, THUMB_SIZE, THUMB_SIZE, 3) uint8
    errors: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    missing_classes: list[str]
    unknown_folders: list[str]

    def readable(self, name: str) -> list:
        """A per-path list restricted to the readable images (the rows of `thumbs`)."""
        values = getattr(self, name)
        return [values[i] for i in np.flatnonzero(self.ok)]


def _read_one(path: str):
    """Hash, header and thumbnail of one file. Never raises: failures become a reason string."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return None, None, None, f"cannot read file ({e.strerror or e})"
    digest = hashlib.sha1(data).hexdigest()
    try:
        header = image_info(path)
    except ImageReadError:  # load_rgb gives the reason below
        header = None
    try:
        return digest, header, load_rgb(path, THUMB_SIZE), None
    except ImageReadError as e:
        return digest, header, None, e.reason


def _read_dataset(root, workers, progress, desc) -> _Dataset:
    found = scan(root)
    paths = [s.path for s in found.samples]
    workers = workers or default_workers()
    thumbs = np.empty((len(paths), THUMB_SIZE, THUMB_SIZE, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    sha1, headers, errors = [], [], []
    with ThreadPoolExecutor(workers) as pool:  # Pillow and hashlib release the GIL
        results = pool.map(_read_one, paths, chunksize=16)
        for i, (digest, header, thumb, reason) in enumerate(
                tqdm(results, total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)):
            sha1.append(digest)
            headers.append(header)
            if thumb is None:
                errors.append((paths[i], reason))
            else:
                thumbs[i], ok[i] = thumb, True
    return _Dataset(classes=list(found.classes), paths=paths,
                    labels=np.array([s.label for s in found.samples], dtype=np.int64),
                    groups=[s.group for s in found.samples], sha1=sha1, headers=headers, ok=ok,
                    thumbs=thumbs[ok], errors=errors, skipped=list(found.skipped),
                    missing_classes=list(found.missing_classes), unknown_folders=list(found.unknown_folders))


# ----------------------------------------------------------------------------------------------
# Counts, sizes, exact duplicates
# ----------------------------------------------------------------------------------------------

def _class_balance(ds: _Dataset) -> dict:
    """Counts of readable images per class (unreadable ones will not be trained on)."""
    counts = Counter(ds.labels[ds.ok].tolist())
    class_counts = {c: int(counts.get(i, 0)) for i, c in enumerate(ds.classes)}
    total = sum(class_counts.values())
    smallest = min(class_counts.values(), default=0)
    return {
        "class_counts": class_counts,
        "class_share": {c: (n / total if total else 0.0) for c, n in class_counts.items()},
        # None ("infinite") when some class has no readable image at all.
        "imbalance_ratio": max(class_counts.values()) / smallest if smallest else None,
    }


def _sizes_and_modes(ds: _Dataset) -> dict:
    headers = [h for h in ds.headers if h is not None]
    sizes = Counter((w, h) for w, h, _, _ in headers)
    return {
        "sizes": [{"width": w, "height": h, "count": n} for (w, h), n in sizes.most_common()],
        "modes": dict(Counter(m for _, _, m, _ in headers).most_common()),
        "formats": dict(Counter(f for _, _, _, f in headers).most_common()),
    }


def _exact_duplicates_within(ds: _Dataset) -> list[dict]:
    """Groups of files with identical bytes (readable or not: two copies of a broken file are
    still a duplicate worth removing)."""
    by_hash: dict[str, list[int]] = {}
    for i, digest in enumerate(ds.sha1):
        if digest is not None:
            by_hash.setdefault(digest, []).append(i)
    return [{"sha1": d, "paths": [ds.paths[i] for i in idx], "classes": [ds.classes[ds.labels[i]] for i in idx]}
            for d, idx in by_hash.items() if len(idx) > 1]


def _exact_duplicates_across(a: _Dataset, b: _Dataset) -> list[dict]:
    in_b: dict[str, list[int]] = {}
    for j, digest in enumerate(b.sha1):
        if digest is not None:
            in_b.setdefault(digest, []).append(j)
    in_a: dict[str, list[int]] = {}
    for i, digest in enumerate(a.sha1):
        if digest in in_b:
            in_a.setdefault(digest, []).append(i)
    return [{"sha1": d, "paths": [a.paths[i] for i in idx], "classes": [a.classes[a.labels[i]] for i in idx],
             "against_paths": [b.paths[j] for j in in_b[d]],
             "against_classes": [b.classes[b.labels[j]] for j in in_b[d]]}
            for d, idx in in_a.items()]


# ----------------------------------------------------------------------------------------------
# Near-duplicates (found by data/near_duplicates.py), as the audit reports them
# ----------------------------------------------------------------------------------------------

def _near_duplicates(a: _Dataset, fa: MatchFeatures, b: _Dataset | None, fb: MatchFeatures | None,
                     progress: bool) -> list[dict]:
    """Near-duplicate pairs within `a` (b is None) or between `a` and `b`, best score first.
    Pairs of byte-identical files are left to the exact-duplicate report."""
    pairs, scores = near_duplicates.find_pairs(fa, fb, progress)
    other = a if b is None else b
    paths_a, labels_a, groups_a, sha_a = (a.readable(n) for n in ("paths", "labels", "groups", "sha1"))
    paths_b, labels_b, groups_b, sha_b = (other.readable(n) for n in ("paths", "labels", "groups", "sha1"))
    out = []
    for (i, j), score in zip(pairs.tolist(), scores.tolist()):
        if sha_a[i] == sha_b[j]:
            continue
        out.append({"a": paths_a[i], "b": paths_b[j], "class_a": a.classes[labels_a[i]],
                    "class_b": other.classes[labels_b[j]], "score": round(score, 4),
                    "same_group": groups_a[i] == groups_b[j]})
    out.sort(key=lambda p: -p["score"])
    return out


def _pair_summary(pairs: list[dict]) -> dict:
    """Counts that matter for a split: pairs that a group-wise split would still separate, and
    pairs whose two images carry different labels."""
    images = {p["a"] for p in pairs} | {p["b"] for p in pairs}
    return {"pairs": len(pairs), "images": len(images),
            "different_group": sum(not p["same_group"] for p in pairs),
            "different_class": sum(p["class_a"] != p["class_b"] for p in pairs)}


# ----------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------

def _colour_features(thumbs: np.ndarray, chunk: int = 2048) -> dict[str, np.ndarray]:
    """Per-image colour statistics on 0-255: mean and std of R, G, B over the whole thumbnail,
    mean R, G, B of the background (brightest pixels), mean hue (circular, weighted by
    saturation) and mean saturation (HSV)."""
    from matplotlib.colors import rgb_to_hsv

    n = len(thumbs)
    out = {"mean": np.zeros((n, 3)), "std": np.zeros((n, 3)), "background": np.zeros((n, 3)),
           "hue": np.zeros(n), "saturation": np.zeros(n)}
    n_bright = max(1, int(round(BACKGROUND_FRACTION * THUMB_SIZE * THUMB_SIZE)))
    for start in range(0, n, chunk):
        x = thumbs[start:start + chunk].astype(np.float32).reshape(-1, THUMB_SIZE * THUMB_SIZE, 3)
        sl = slice(start, start + len(x))
        out["mean"][sl] = x.mean(axis=1)
        out["std"][sl] = x.std(axis=1)
        brightest = np.argpartition(-x.sum(axis=2), n_bright - 1, axis=1)[:, :n_bright]
        out["background"][sl] = np.take_along_axis(x, brightest[:, :, None], axis=1).mean(axis=1)
        hsv = rgb_to_hsv(x / 255.0)
        angle, sat = hsv[..., 0] * 2 * np.pi, hsv[..., 1]
        out["hue"][sl] = (np.degrees(np.arctan2((sat * np.sin(angle)).sum(1), (sat * np.cos(angle)).sum(1)))) % 360
        out["saturation"][sl] = sat.mean(axis=1)
    return out


def _effect_sizes(values: np.ndarray, is_class: np.ndarray) -> np.ndarray:
    """Cohen's d per column: (mean of the class - mean of the rest) / pooled per-image std."""
    x1, x0 = values[is_class], values[~is_class]
    n1, n0 = len(x1), len(x0)
    if n1 < 2 or n0 < 2:
        return np.zeros(values.shape[1])
    pooled = np.sqrt(((n1 - 1) * x1.var(axis=0, ddof=1) + (n0 - 1) * x0.var(axis=0, ddof=1)) / (n1 + n0 - 2))
    return (x1.mean(axis=0) - x0.mean(axis=0)) / np.maximum(pooled, 1e-6)


def _colour_only_auc(values: np.ndarray, is_class: np.ndarray) -> float | None:
    """Cross-validated AUC of a logistic regression telling the class from the rest by `values`
    alone; None when either side is too small to cross-validate."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_pos, n_neg = int(is_class.sum()), int((~is_class).sum())
    if min(n_pos, n_neg) < SHORTCUT_MIN_IMAGES:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    proba = cross_val_predict(model, values, is_class, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(is_class, proba))


def _colour_audit(ds: _Dataset) -> dict:
    """Per-class colour statistics, and the shortcut test of SHORTCUT_CRITERION."""
    labels = ds.labels[ds.ok]
    feats = _colour_features(ds.thumbs)
    per_class, verdicts = {}, {}
    present = [k for k in range(len(ds.classes)) if (labels == k).any()]
    for k in present:
        sel = labels == k
        name = ds.classes[k]
        hue_angle = np.radians(feats["hue"][sel])
        per_class[name] = {
            "n": int(sel.sum()),
            "mean_rgb": _rounded(feats["mean"][sel].mean(axis=0)),
            "mean_rgb_std": _rounded(feats["mean"][sel].std(axis=0)),    # spread of per-image means
            "pixel_std_rgb": _rounded(feats["std"][sel].mean(axis=0)),  # contrast within an image
            "background_rgb": _rounded(feats["background"][sel].mean(axis=0)),
            "background_rgb_std": _rounded(feats["background"][sel].std(axis=0)),
            "mean_hue_deg": round(float(np.degrees(np.arctan2(np.sin(hue_angle).mean(), np.cos(hue_angle).mean()))
                                        % 360), 1),
            "mean_saturation": round(float(feats["saturation"][sel].mean()), 3),
        }
        if len(present) < 2:
            continue
        d_background = _effect_sizes(feats["background"], sel)
        d_mean = _effect_sizes(feats["mean"], sel)
        auc = _colour_only_auc(feats["background"], sel)
        if auc is not None:
            flagged = auc >= SHORTCUT_MIN_AUC
        else:
            flagged = bool(np.abs(d_background).max() >= SHORTCUT_MIN_EFFECT)
        verdicts[name] = {"auc": None if auc is None else round(auc, 4),
                          "background_effect_rgb": _rounded(d_background, 2),
                          "image_effect_rgb": _rounded(d_mean, 2),
                          "flagged": bool(flagged)}
    return {"per_class": per_class,
            "shortcut": {"criterion": SHORTCUT_CRITERION, "classes": verdicts,
                         "flagged": [c for c, v in verdicts.items() if v["flagged"]]}}


def _rounded(values, digits: int = 1) -> list[float]:
    return [round(float(v), digits) for v in values]


# ----------------------------------------------------------------------------------------------
# Warnings and rendering
# ----------------------------------------------------------------------------------------------

def _warnings(result: dict) -> list[str]:
    out = []
    if result["unreadable"]:
        out.append(f"{len(result['unreadable'])} unreadable image file(s): training and evaluation will skip them")
    empty = [c for c, n in result["class_counts"].items() if n == 0]
    if empty:
        out.append(f"classes with no readable image: {', '.join(empty)}")
    ratio = result["imbalance_ratio"]
    if ratio is None or ratio >= 5:
        out.append(f"class imbalance: largest / smallest class = {'inf' if ratio is None else f'{ratio:.1f}'}")
    for name, v in result["colour"]["shortcut"]["classes"].items():
        if v["flagged"]:
            d = v["background_effect_rgb"]
            how = f"AUC {v['auc']:.3f}" if v["auc"] is not None else f"max |d| {max(map(abs, d)):.2f}"
            out.append(f"colour shortcut: {name} can be told from the other classes by background colour alone "
                       f"({how}; background R/G/B differs from the rest by d = {d[0]:+.2f}/{d[1]:+.2f}/{d[2]:+.2f})")
    n_exact = sum(len(g["paths"]) - 1 for g in result["exact_duplicates"])
    if n_exact:
        out.append(f"{n_exact} exact duplicate file(s) in {len(result['exact_duplicates'])} group(s)")
    summary = result["near_duplicate_summary"]
    if summary["pairs"]:
        out.append(f"{summary['pairs']} near-duplicate pair(s) within the set (one cell twice: turned, mirrored, "
                   f"rescaled or photographed again); {summary['different_group']} across different field-of-view "
                   f"groups, "
                   f"{summary['different_class']} with different labels")
    if result["against"]:
        a = result["against"]
        if a["exact_duplicates"] or a["near_duplicates"]:
            out.append(f"leak: {len(a['exact_duplicates'])} exact and {len(a['near_duplicates'])} near-duplicate "
                       f"pair(s) shared with {a['root']}")
    return out


__all__ = ["run_audit", "near_duplicate_pairs", "NEAR_DUPLICATE_MIN_SCORE",
           "SHORTCUT_CRITERION"]
