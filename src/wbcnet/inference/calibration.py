"""Is the confidence honest? Expected calibration error, reliability diagram, temperature scaling.

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") divides the
logits by one scalar T fitted on the validation split; the arg-max, hence accuracy, is unchanged.
inference/predict.py and evaluation/evaluate.py already divide by the checkpoint's meta['temperature'].
Functions here take logits or probabilities and labels; they know nothing of models.
"""
from __future__ import annotations


import numpy as np

N_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(1, keepdims=True)
    log_norm = m[:, 0] + np.log(np.exp(z - m).sum(1))
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict:
    """Top-label confidence in `n_bins` equal-width bins (lo, hi]: count, mean confidence and
    accuracy per bin (NaN where empty), and the ECE they add up to."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # (lo, hi] bins as in Guo et al.; a confidence of exactly 0 cannot occur for a top label.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, acc = conf_sum / count, acc_sum / count
    n = max(len(conf), 1)
    ece = float(np.sum(np.abs(acc_sum - conf_sum)) / n)  # sum_b n_b/N |acc_b - conf_b|
    return {"edges": edges.tolist(), "count": count.astype(int).tolist(), "confidence": mean_conf.tolist(),
            "accuracy": acc.tolist(), "ece": ece}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label ECE: the count-weighted mean gap between confidence and accuracy over bins."""
    return reliability_bins(probs, labels, n_bins)["ece"]


def fit_temperature(logits: np.ndarray, labels: np.ndarray, t_min: float = 0.05, t_max: float = 20.0) -> float:
    """The T minimising validation NLL of softmax(logits / T), within [t_min, t_max].

    NLL is convex in beta = 1/T (a log-sum-exp of linear functions minus a linear one), so a
    bounded scalar search on beta finds the global minimum; no learning rate or iteration count
    to tune, unlike LBFGS on the logits. T = 1 is always a candidate, so the fitted T never
    makes the validation NLL worse. Degenerate input (no rows, non-finite logits) gives 1.0."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if logits.ndim != 2 or len(logits) == 0 or len(labels) != len(logits) or not np.isfinite(logits).all():
        return 1.0
    res = minimize_scalar(lambda beta: nll(logits, labels, 1.0 / beta), bounds=(1.0 / t_max, 1.0 / t_min),
                          method="bounded", options={"xatol": 1e-5})
    t = float(1.0 / res.x) if res.success and np.isfinite(res.x) else 1.0
    return t if nll(logits, labels, t) < nll(logits, labels, 1.0) else 1.0


def calibration_summary(logits: np.ndarray, labels: np.ndarray, temperature: float, n_bins: int = N_BINS) -> dict:
    """ECE and NLL before (T = 1) and after dividing the logits by `temperature`."""
    labels = np.asarray(labels)
    return {
        "temperature": float(temperature),
        "n": int(len(labels)),
        "n_bins": n_bins,
        "ece_before": expected_calibration_error(softmax(logits), labels, n_bins),
        "ece_after": expected_calibration_error(softmax(logits, temperature), labels, n_bins),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
    }


def format_summary(s: dict, split: str = "validation") -> str:
    return (f"temperature scaling on the {split} split (n={s['n']}): T={s['temperature']:.3f}  "
            f"ECE {s['ece_before']:.4f} -> {s['ece_after']:.4f}  NLL {s['nll_before']:.4f} -> {s['nll_after']:.4f}")
