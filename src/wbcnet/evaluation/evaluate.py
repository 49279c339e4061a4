"""Run a model over labelled images -> an EvalResult (core/results.py), and its evaluation folder.

`compute_evaluation` turns predictions into the record: every number of metrics.json (bootstrap
intervals, calibration, the top confusions, selective prediction), each cell with its true
class, and what the pictures are drawn from. `evaluate_samples`, `evaluate_folder` and
`evaluate_sets` are the tasks that run the model, compute, and have render/evaluation.py write
the folder (numbers, pictures, and report.html, which shows all of it in one file)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..cells.preprocess import from_meta
from ..core.errors import WbcnetError
from ..core.results import Calibration, CellResult, EvalResult, ShiftSummary
from ..data.cache import decode_images
from ..data.scan import Sample, scan
from ..inference import calibration as cal
from ..inference import explain
from ..inference.runner import run_model
from . import analysis
from . import metrics as M


def compute_evaluation(paths: list[str], y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                       extra: dict | None = None, *, logits: np.ndarray | None = None, temperature: float = 1.0,
                       n_resamples: int = analysis.N_RESAMPLES, seed: int = analysis.SEED,
                       shift_score: np.ndarray | None = None, unfamiliar: np.ndarray | None = None) -> EvalResult:
    """The numbers of an evaluation. `probs` are the probabilities reported (logits / `temperature`);
    with the raw `logits` too, calibration is also reported at T = 1, to show what the
    temperature bought. `extra`: checkpoint, model, source, preprocess, cell_not_found, shift."""
    y_true = np.asarray(y_true)
    y_pred, confidence = probs.argmax(1), probs.max(1)
    bins = cal.reliability_bins(probs, y_true)
    calibration = Calibration(cal.N_BINS, float(temperature), bins["ece"])
    panels = [(f"with the checkpoint's temperature, T = {temperature:.3g}" if temperature != 1.0
               else "no temperature scaling (T = 1)", bins)]
    if logits is not None and len(y_true):
        raw = cal.reliability_bins(cal.softmax(logits), y_true)
        calibration.nll, calibration.ece_uncalibrated = cal.nll(logits, y_true, temperature), raw["ece"]
        calibration.nll_uncalibrated = cal.nll(logits, y_true)
        if temperature != 1.0:
            panels.insert(0, ("without temperature scaling (T = 1)", raw))
    curve = analysis.coverage_curve(y_true, y_pred, confidence)
    numbers = M.compute_metrics(y_true, y_pred, classes)
    cells = [CellResult(p, classes[q], float(row[q]), {c: float(v) for c, v in zip(classes, row)},
                        unfamiliar=None if unfamiliar is None else bool(unfamiliar[i]),
                        shift_score=None if shift_score is None else float(shift_score[i]), true_class=classes[t])
             for i, (p, t, q, row) in enumerate(zip(paths, y_true, y_pred, probs))]
    return EvalResult(**numbers, **(extra or {}),
                      ci=analysis.bootstrap_ci(y_true, y_pred, classes, n_resamples, seed),
                      top_confusions=analysis.top_confusions(numbers["confusion_matrix"], classes),
                      ece=bins["ece"], calibration=calibration, selective=analysis.coverage_table(curve),
                      shift_scores=shift_score, cells=cells, report_text=M.report_text(y_true, y_pred, classes),
                      reliability=panels, coverage=curve)


def evaluate_samples(model, meta, samples: list[Sample], out, title=None, run_dir=None,
                     batch_size: int = 128, workers: int | None = None, bf16: bool | None = None,
                     images: np.ndarray | None = None, progress: bool = True, explain_maps: bool = True,
                     source: str | None = None, n_resamples: int = analysis.N_RESAMPLES, tta: bool = False,
                     shift_check: bool = True) -> EvalResult:
    """Decode (unless `images` are given, aligned with `samples`), predict, compute, and write the folder.

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
    result = compute_evaluation(paths, y_true, probs, meta.classes,
                                {"checkpoint": str(meta.path) if meta.path else None, "model": meta.model,
                                 "source": source, "preprocess": dict(meta.preprocess), **extra_counts},
                                logits=logits, temperature=temperature, n_resamples=n_resamples,
                                shift_score=pred.shift_score, unfamiliar=pred.unfamiliar)
    from ..render.evaluation import write_evaluation

    write_evaluation(out, result, title, run_dir, images=images, figures=figures)
    if pred.unfamiliar is not None:
        from ..inference.predict import warn_if_unfamiliar

        warn_if_unfamiliar(pred.unfamiliar, meta)
    return result


def shift_summary(meta, y_true: np.ndarray, pred) -> ShiftSummary:
    """The unfamiliar-image check on labelled cells: how many are flagged, how accurate the rest
    are, and the risk-coverage of referring unfamiliar or unconfident cells."""
    from ..models.shift import referral_table, unfamiliar_warning

    flagged = pred.unfamiliar
    correct = pred.predicted == y_true
    share = float(flagged.mean()) if len(flagged) else 0.0
    return ShiftSummary(
        threshold=meta.shift_stats.threshold, share_unfamiliar=round(share, 4), n_unfamiliar=int(flagged.sum()),
        accuracy_familiar=round(float(correct[~flagged].mean()), 4) if (~flagged).any() else None,
        accuracy_unfamiliar=round(float(correct[flagged].mean()), 4) if flagged.any() else None,
        referral=referral_table(correct, pred.confidence, flagged),
        warning=unfamiliar_warning(flagged, [s.get("name", "?") for s in meta.sources]))


def evaluate_folder(model, meta, data, out, run_dir=None, split: str | None = None, source_name: str = "",
                    **kw) -> EvalResult:
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


SUMMARY_FIELDS = EvalResult.SUMMARY_COLUMNS


def evaluate_sets(model, meta, sets: list[tuple[str, str]], out, split: str | None = None,
                  home: list[str] | None = None, **kw) -> list[dict]:
    """Evaluate on each named (name, path) set into out/NAME/, then write the summary table. With
    the unfamiliar-image check, each set that is not `home` (default: the sets named after the
    training labs) gets the AUROC of the shift score against the home sets' cells."""
    from ..render.evaluation import write_summary

    out = Path(out)
    rows, scores = [], {}
    for name, path in sets:
        print(f"set {name}: {path}")
        # --split picks rows of a run's split.csv; a folder is evaluated whole.
        result = evaluate_folder(model, meta, path, out / name, split=split if str(path).endswith(".csv") else None,
                                 source_name=name, **kw)
        rows.append(result.summary_row(name))
        if result.shift_scores is not None:
            scores[name] = result.shift_scores
    home = set(home or default_home(meta, [n for n, _ in sets]))
    if scores and home & set(scores):
        from ..models.shift import auroc

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
