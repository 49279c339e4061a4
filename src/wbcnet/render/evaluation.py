"""An evaluation's folder from its EvalResult: metrics.json, classification_report.txt,
predictions.csv, the pictures and report.html; and the summary table of several sets."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.files import write_text_atomic
from ..core.results import CellResult, EvalResult
from . import plots, tiles
from .report import write_report
from .tables import write_csv, write_json


def write_evaluation(out, result: EvalResult, title: str | None = None, run_dir=None, *,
                     images: np.ndarray | None = None, figures: dict[str, Path] | None = None) -> dict[str, Path]:
    """metrics.json, classification_report.txt, predictions.csv, confusion_matrix.png, per_class.png,
    reliability.png, coverage.png, training_curves.png (when `run_dir` has a metrics.csv),
    error_gallery.png (when the decoded `images` are given and there are mistakes) and report.html,
    which also shows any `figures` made beforehand (the Grad-CAM grids). Returns the pictures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = result.to_dict()
    write_json(out / "metrics.json", metrics, newline=False)
    write_text_atomic(out / "classification_report.txt", result.report_text)
    classes = result.classes
    write_csv(out / "predictions.csv", CellResult.columns("evaluate", classes, result.shift_scores is not None),
              (c.to_row(classes, "evaluate") for c in result.cells))

    figs = {"confusion": plots.plot_confusion(metrics, out / "confusion_matrix.png", title),
            "per_class": plots.plot_per_class(metrics, out / "per_class.png"),
            "reliability": plots.plot_reliability(result.reliability, out / "reliability.png"),
            "coverage": plots.plot_coverage(result.coverage, out / "coverage.png")}
    if run_dir is not None and (Path(run_dir) / "metrics.csv").exists():
        figs["training_curves"] = plots.plot_curves(Path(run_dir) / "metrics.csv", out / "training_curves.png")
    if images is not None:
        index = {c: k for k, c in enumerate(classes)}
        y_true = np.array([index[c.true_class] for c in result.cells], dtype=np.int64)
        y_pred = np.array([index[c.class_name] for c in result.cells], dtype=np.int64)
        confidence = np.array([c.confidence for c in result.cells])
        figs["error_gallery"] = tiles.plot_error_gallery(images, y_true, y_pred, confidence, classes,
                                                           out / "error_gallery.png")
    figs.update(figures or {})
    write_report(out, result, figs, title)
    return figs


def write_summary(out, rows: list[dict], title: str = "Evaluation on several sets") -> None:
    """summary.csv, summary.md and report.html: one row per set, each linking to its own report."""
    from .html import escape, page, table

    out = Path(out)
    write_csv(out / "summary.csv", EvalResult.SUMMARY_COLUMNS, rows)
    md = ["| set | n | accuracy (95% CI) | balanced accuracy (95% CI) | macro-F1 (95% CI) | ECE | flagged unfamiliar "
          "| accuracy of the rest | shift AUROC |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['set']} | {r['n']} | {r['accuracy']:.4f} ({r['accuracy_ci']}) | {r['balanced_accuracy']:.4f} "
                  f"({r['balanced_accuracy_ci']}) | {r['macro_f1']:.4f} ({r['macro_f1_ci']}) | {r['ece']:.4f} | "
                  f"{_share(r['share_unfamiliar'])} | {r['accuracy_familiar']} | {r['shift_auroc']} |")
    write_text_atomic(out / "summary.md", "\n".join(md) + "\n")
    body = [f"<h1>wbcnet: {escape(title)}</h1>",
            '<p class="sub">One row per set; 95% percentile-bootstrap intervals. Each set\'s name opens its full '
            'report (confusion matrix, calibration, errors, where the model looked).</p>',
            table(["set", "cells", "accuracy", "95% CI", "balanced accuracy", "95% CI", "macro-F1", "95% CI", "ECE",
                   "flagged unfamiliar", "accuracy of the rest", "shift AUROC"],
                  [[f'<a href="{escape(r["set"])}/report.html">{escape(r["set"])}</a>', str(r["n"]),
                    f"{r['accuracy']:.4f}", escape(r["accuracy_ci"]), f"{r['balanced_accuracy']:.4f}",
                    escape(r["balanced_accuracy_ci"]), f"{r['macro_f1']:.4f}", escape(r["macro_f1_ci"]),
                    f"{r['ece']:.4f}", _share(r["share_unfamiliar"]), escape(r["accuracy_familiar"]),
                    escape(r["shift_auroc"])] for r in rows], muted_cols=(3, 5, 7)),
            '<p class="note">Flagged unfamiliar: cells whose features lie further from the training labs\' cells '
            'than 99% of their validation cells (referred to a person). Shift AUROC: how well that score tells '
            'this set\'s cells from the training labs\' own (1: perfectly, 0.5: not at all).</p>']
    write_text_atomic(out / "report.html", page(title, "\n".join(body)))


def _share(v) -> str:
    return f"{v:.1%}" if isinstance(v, float) else str(v)
