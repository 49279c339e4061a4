"""Run a model over images -> predictions, and write an evaluation folder.

The folder holds the numbers (metrics.json with bootstrap intervals, calibration and the top
confusions; predictions.csv), the pictures, and report.html, which shows all of it in one file."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import analysis, explain, plots, report
from . import calibration as cal
from . import metrics as M
from .data.cache import decode_images
from .data.preprocess import from_meta
from .data.scan import Sample, scan
from .errors import WbcnetError
from .files import atomic_write, write_text_atomic
from .inference import run_model


def write_evaluation(out, paths: list[str], y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                     title: str | None = None, run_dir=None, extra: dict | None = None, *,
                     logits: np.ndarray | None = None, temperature: float = 1.0, images: np.ndarray | None = None,
                     figures: dict[str, Path] | None = None, n_resamples: int = analysis.N_RESAMPLES,
                     seed: int = analysis.SEED, shift_score: np.ndarray | None = None,
                     unfamiliar: np.ndarray | None = None) -> dict:
    """metrics.json, classification_report.txt, predictions.csv, confusion_matrix.png, per_class.png,
    reliability.png, coverage.png, training_curves.png (when `run_dir` has a metrics.csv),
    error_gallery.png (when the decoded `images` are given and there are mistakes) and report.html,
    which also shows any `figures` made beforehand (the Grad-CAM grids).

    `probs` are the probabilities reported (logits / `temperature`); with the raw `logits` too,
    calibration is also reported at T = 1, to show what the temperature bought."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    y_true = np.asarray(y_true)
    y_pred, confidence = probs.argmax(1), probs.max(1)
    result = M.compute_metrics(y_true, y_pred, classes)
    result.update(extra or {})
    result["ci"] = analysis.bootstrap_ci(y_true, y_pred, classes, n_resamples, seed)
    result["top_confusions"] = analysis.top_confusions(result["confusion_matrix"], classes)
    bins = cal.reliability_bins(probs, y_true)
    result["ece"] = bins["ece"]
    result["calibration"] = {"n_bins": cal.N_BINS, "temperature": float(temperature), "ece": bins["ece"]}
    panels = [(f"with the checkpoint's temperature, T = {temperature:.3g}" if temperature != 1.0
               else "no temperature scaling (T = 1)", bins)]
    if logits is not None and len(y_true):
        raw = cal.reliability_bins(cal.softmax(logits), y_true)
        result["calibration"].update(nll=cal.nll(logits, y_true, temperature), ece_uncalibrated=raw["ece"],
                                     nll_uncalibrated=cal.nll(logits, y_true))
        if temperature != 1.0:
            panels.insert(0, ("without temperature scaling (T = 1)", raw))
    curve = analysis.coverage_curve(y_true, y_pred, confidence)
    result["selective"] = analysis.coverage_table(curve)

    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    (out / "classification_report.txt").write_text(M.report_text(y_true, y_pred, classes))
    with open(out / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        shifted = shift_score is not None
        w.writerow(["path", "true", "predicted", "confidence"] + [f"p_{c}" for c in classes] +
                   (["shift_score", "unfamiliar"] if shifted else []))
        for i, (p, t, q, row) in enumerate(zip(paths, y_true, y_pred, probs)):
            w.writerow([p, classes[t], classes[q], f"{row[q]:.4f}"] + [f"{v:.4f}" for v in row] +
                       ([f"{shift_score[i]:.2f}", "yes" if unfamiliar[i] else "no"] if shifted else []))

    figs = {"confusion": plots.plot_confusion(result, out / "confusion_matrix.png", title),
            "per_class": analysis.plot_per_class(result, out / "per_class.png"),
            "reliability": cal.plot_reliability(panels, out / "reliability.png"),
            "coverage": analysis.plot_coverage(curve, out / "coverage.png")}
    if run_dir is not None and (Path(run_dir) / "metrics.csv").exists():
        figs["training_curves"] = plots.plot_curves(Path(run_dir) / "metrics.csv", out / "training_curves.png")
    if images is not None:
        figs["error_gallery"] = explain.plot_error_gallery(images, y_true, y_pred, confidence, classes,
                                                           out / "error_gallery.png")
    figs.update(figures or {})
    report.write_report(out, result, figs, title)
    return result


def evaluate_samples(model, meta, samples: list[Sample], out, title=None, run_dir=None,
                     batch_size: int = 128, workers: int | None = None, bf16: bool | None = None,
                     images: np.ndarray | None = None, progress: bool = True, explain_maps: bool = True,
                     source: str | None = None, n_resamples: int = analysis.N_RESAMPLES, tta: bool = False,
                     shift_check: bool = True) -> dict:
    """Decode (unless `images` are given, aligned with `samples`), predict, and write the folder.

    `explain_maps=False` skips the Grad-CAM/attention grids, the one part that runs the model
    backwards; `source` names the images in the report (default: the folder they share)."""
    extra_counts = {}
    if images is None:
        decoded = decode_images([s.path for s in samples], from_meta(meta), workers, "decoding", progress)
        for path, reason in decoded.errors:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        samples = [samples[i] for i in decoded.index]
        images = decoded.images
        if meta.preprocess.get("crop") == "cell":
            no_cell = int((~decoded.found).sum())
            print(f"cell found in {len(samples) - no_cell} of {len(samples)} images" +
                  (f"; the whole picture was used for the other {no_cell}" if no_cell else ""))
            extra_counts = {"cell_not_found": no_cell}
    if not len(samples):
        raise WbcnetError("no readable images to evaluate")
    pred = run_model(model, meta, images, batch_size, bf16, tta=tta, shift_check=shift_check)
    logits, probs, temperature = pred.logits, pred.probs, pred.temperature
    y_true = np.array([s.label for s in samples], dtype=np.int64)
    paths = [s.path for s in samples]
    figures = explain.write_explanations(model, meta, images, y_true, probs, out) if explain_maps else {}
    if source is None:
        try:
            source = os.path.commonpath([os.path.abspath(p) for p in paths])
        except ValueError:  # paths on different drives
            source = None
    if pred.unfamiliar is not None:
        extra_counts["shift"] = shift_summary(meta, y_true, pred)
    result = write_evaluation(out, paths, y_true, probs, meta.classes, title, run_dir,
                              extra={"checkpoint": str(meta.path) if meta.path else None, "model": meta.model,
                                     "source": source, "preprocess": dict(meta.preprocess), **extra_counts},
                              logits=logits, temperature=temperature, images=images, figures=figures,
                              n_resamples=n_resamples, shift_score=pred.shift_score, unfamiliar=pred.unfamiliar)
    if pred.unfamiliar is not None:
        from .predict import warn_if_unfamiliar

        warn_if_unfamiliar(pred.unfamiliar, meta)
        result["_shift_scores"] = pred.shift_score  # for AUROC across sets; not in metrics.json
    return result


def shift_summary(meta, y_true: np.ndarray, pred) -> dict:
    """The unfamiliar-image check on labelled cells: how many are flagged, how accurate the rest
    are, and the risk-coverage of referring unfamiliar or unconfident cells."""
    from .shift import referral_table, unfamiliar_warning

    flagged = pred.unfamiliar
    correct = pred.predicted == y_true
    share = float(flagged.mean()) if len(flagged) else 0.0
    return {"threshold": meta.shift_stats.threshold, "share_unfamiliar": round(share, 4),
            "n_unfamiliar": int(flagged.sum()),
            "accuracy_familiar": round(float(correct[~flagged].mean()), 4) if (~flagged).any() else None,
            "accuracy_unfamiliar": round(float(correct[flagged].mean()), 4) if flagged.any() else None,
            "referral": referral_table(correct, pred.confidence, flagged),
            "warning": unfamiliar_warning(flagged, [s.get("name", "?") for s in meta.sources])}


def evaluate_folder(model, meta, data, out, run_dir=None, split: str | None = None, source_name: str = "",
                    **kw) -> dict:
    """Evaluate on an ImageFolder/CSV whose classes are matched to the checkpoint's by name
    (`split`: only that split of a run's split.csv; `source_name`: only that source's rows of a
    multi-lab run's split.csv)."""
    found = scan(data, classes=meta.classes, split=split, source=source_name)
    for path, reason in found.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for folder in found.unknown_folders:
        print(f"warning: {folder} matches none of the model's classes {meta.classes}; not evaluated", file=sys.stderr)
    for c in found.missing_classes:
        print(f"note: class '{c}' has no images in {data}; its row of the matrix stays empty", file=sys.stderr)
    if not found.samples:
        raise WbcnetError(f"{data}: no images of the model's classes {meta.classes}")
    kw.setdefault("source", str(Path(data).resolve()))
    return evaluate_samples(model, meta, found.samples, out, title=f"{Path(data).name}", run_dir=run_dir, **kw)


SUMMARY_FIELDS = ["set", "n", "accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "macro_f1",
                  "macro_f1_ci", "ece", "share_unfamiliar", "accuracy_familiar", "shift_auroc"]


def summary_row(name: str, result: dict) -> dict:
    ci = result.get("ci", {})

    def interval(key):
        v = ci.get(key)
        return f"{v[0]:.4f}-{v[1]:.4f}" if v else ""

    return {"set": name, "n": result["n"], "accuracy": round(result["accuracy"], 4), "accuracy_ci": interval("accuracy"),
            "balanced_accuracy": round(result["balanced_accuracy"], 4),
            "balanced_accuracy_ci": interval("balanced_accuracy"), "macro_f1": round(result["macro_f1"], 4),
            "macro_f1_ci": interval("macro_f1"), "ece": round(result["ece"], 4),
            "share_unfamiliar": result.get("shift", {}).get("share_unfamiliar", ""),
            "accuracy_familiar": result.get("shift", {}).get("accuracy_familiar", ""), "shift_auroc": ""}


def write_summary(out, rows: list[dict], title: str = "Evaluation on several sets") -> None:
    """summary.csv, summary.md and report.html: one row per set, each linking to its own report."""
    from .htmlpage import escape, page, table

    out = Path(out)
    with atomic_write(out / "summary.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        w.writerows(rows)
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


def evaluate_sets(model, meta, sets: list[tuple[str, str]], out, split: str | None = None,
                  home: list[str] | None = None, **kw) -> list[dict]:
    """Evaluate on each named (name, path) set into out/NAME/, then write the summary table. With
    the unfamiliar-image check, each set that is not `home` (default: the sets named after the
    training labs) gets the AUROC of the shift score against the home sets' cells."""
    out = Path(out)
    rows, scores = [], {}
    for name, path in sets:
        print(f"set {name}: {path}")
        # --split picks rows of a run's split.csv; a folder is evaluated whole.
        result = evaluate_folder(model, meta, path, out / name, split=split if str(path).endswith(".csv") else None,
                                 source_name=name, **kw)
        rows.append(summary_row(name, result))
        if "_shift_scores" in result:
            scores[name] = result["_shift_scores"]
    home = set(home or default_home(meta, [n for n, _ in sets]))
    if scores and home & set(scores):
        from .shift import auroc

        home_scores = np.concatenate([scores[n] for n in scores if n in home])
        for r in rows:
            if r["set"] in scores and r["set"] not in home:
                r["shift_auroc"] = round(auroc(home_scores, scores[r["set"]]), 4)
    write_summary(out, rows)
    return rows


def default_home(meta, names: list[str]) -> list[str]:
    """Sets that hold the training labs' own cells: named as a source, or a source's `_test`."""
    labs = {s.get("name") for s in meta.sources}
    return [n for n in names if n in labs or n.removesuffix("_test") in labs]
