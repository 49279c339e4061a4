"""How sure are the numbers? Bootstrap confidence intervals, top confusions, selective prediction.

Functions take labels, predictions and confidences (never models) and return plain dicts that go
straight into metrics.json; render/plots.py draws them.
"""
from __future__ import annotations


import numpy as np

N_RESAMPLES = 1000
SEED = 0


def _scores_from_confusions(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Batched confusion matrices (B, K, K), rows true -> accuracy, balanced accuracy, macro-F1 (B,)
    and per-class precision, recall, F1 (B, K), each computed as metrics.compute_metrics does on one
    matrix: macro averages run over the classes present (support > 0) in that matrix. Per-class
    precision or recall with a zero denominator is NaN here, not 0: in a resample without a single
    cell of that class it is undefined, and a 0 would drag the interval down for no reason."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(2), cm.sum(1)
    n = cm.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        # F1 = 2TP / (2TP + FP + FN) is defined whenever the class occurs or is predicted;
        # sklearn gives 0 where precision or recall is 0/0, which 2TP/(...) also gives.
        f1_den = support + predicted
        f1 = np.where(f1_den > 0, 2 * tp / f1_den, np.nan)
        present = support > 0
        f1_present = np.where(present, np.nan_to_num(f1), 0.0)
        macro_f1 = f1_present.sum(1) / present.sum(1)
        balanced = np.where(present, recall, 0.0).sum(1) / present.sum(1)
        accuracy = tp.sum(1) / n
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "macro_f1": macro_f1,
            "precision": precision, "recall": recall, "f1": f1}


def bootstrap_confusions(y_true, y_pred, num_classes: int, n_resamples: int = N_RESAMPLES,
                         seed: int = SEED) -> np.ndarray:
    """(n_resamples, K, K) confusion matrices of resamples drawn with replacement, all at once:
    a (B, N) index matrix and one bincount over (resample, true, predicted) codes. Resamples are
    drawn in blocks of about 4 M indices so a large test set does not need gigabytes."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k, n = num_classes, len(y_true)
    rng = np.random.default_rng(seed)
    pair = y_true * k + y_pred                     # (N,) code of each cell's (true, predicted)
    out = np.empty((n_resamples, k, k), dtype=np.int64)
    block = max(1, 4_000_000 // max(n, 1))
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        codes = np.arange(b)[:, None] * (k * k) + pair[rng.integers(0, n, size=(b, n))]
        out[start:start + b] = np.bincount(codes.ravel(), minlength=b * k * k).reshape(b, k, k)
    return out


def bootstrap_ci(y_true, y_pred, classes: list[str], n_resamples: int = N_RESAMPLES, seed: int = SEED,
                 level: float = 0.95) -> dict:
    """Percentile-bootstrap intervals for accuracy, balanced accuracy, macro-F1 and each class's
    precision, recall and F1. Cells are resampled with replacement, the same number as the data;
    fixed `seed`, so the same predictions always give the same intervals."""
    y_true = np.asarray(y_true)
    out = {"method": "percentile bootstrap", "level": level, "n_resamples": int(n_resamples), "seed": int(seed)}
    if len(y_true) == 0 or n_resamples <= 0:
        return out
    scores = _scores_from_confusions(bootstrap_confusions(y_true, y_pred, len(classes), n_resamples, seed))
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(values: np.ndarray) -> list[float] | None:
        values = values[np.isfinite(values)]
        return [round(float(v), 6) for v in np.percentile(values, q)] if len(values) else None

    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        out[name] = interval(scores[name])
    out["per_class"] = {c: {m: interval(scores[m][:, i]) for m in ("precision", "recall", "f1")}
                        for i, c in enumerate(classes)}
    return out


def top_confusions(confusion_matrix, classes: list[str], k: int = 10) -> list[dict]:
    """The `k` most frequent mistakes as (true, predicted) pairs off the diagonal, most frequent
    first (ties by class order). `share_of_true`: the fraction of that true class sent there."""
    cm = np.asarray(confusion_matrix, dtype=np.int64)
    rows = cm.sum(1)
    pairs = [(int(cm[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and cm[i, j] > 0]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": n, "share_of_true": round(float(n / rows[i]), 4)}
            for n, i, j in pairs[:k]]


def coverage_curve(y_true, y_pred, confidence) -> dict:
    """Selective prediction: keep only the most confident cells and refer the rest to a person.
    For every coverage m/N, the accuracy on the m most confident cells and the confidence
    threshold that keeps them (the m-th highest confidence)."""
    y_true, y_pred, confidence = np.asarray(y_true), np.asarray(y_pred), np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    correct = (y_true[order] == y_pred[order]).astype(np.float64)
    kept = np.arange(1, len(order) + 1)
    return {"coverage": (kept / max(len(order), 1)).tolist(), "accuracy": (np.cumsum(correct) / kept).tolist(),
            "threshold": confidence[order].tolist()}


def coverage_table(curve: dict, coverages=(1.0, 0.95, 0.9, 0.8, 0.7, 0.5)) -> list[dict]:
    """The curve read at a few coverages: what `predict --min-confidence THRESHOLD` would buy."""
    cov = np.asarray(curve["coverage"])
    rows = []
    for c in coverages:
        if not len(cov):
            break
        i = min(int(np.searchsorted(cov, c - 1e-12)), len(cov) - 1)  # smallest kept set reaching c
        rows.append({"coverage": round(float(cov[i]), 4), "accuracy": round(float(curve["accuracy"][i]), 4),
                     "min_confidence": round(float(curve["threshold"][i]), 4)})
    return rows
