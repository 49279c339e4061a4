"""Predictions -> numbers. Knows nothing of models or files; scikit-learn does the counting."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, classification_report, confusion_matrix,
                             f1_score, precision_recall_fscore_support)


def compute_metrics(y_true, y_pred, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro/weighted F1, per-class P/R/F1/support and the confusion
    matrix (rows true, columns predicted, in `classes` order). Classes absent from `y_true` keep
    their row of zeros and are listed in `absent_classes` rather than skewing macro averages."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(classes)))
    present = sorted(set(y_true.tolist()))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "classes": list(classes),
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "absent_classes": [c for i, c in enumerate(classes) if i not in present],
    }


def report_text(y_true, y_pred, classes: list[str]) -> str:
    return classification_report(y_true, y_pred, labels=list(range(len(classes))), target_names=classes,
                                 digits=4, zero_division=0)


def macro_f1(y_true, y_pred) -> float:
    present = sorted(set(np.asarray(y_true).tolist()))
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
