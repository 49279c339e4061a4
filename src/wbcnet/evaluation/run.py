"""The end of a training run: the best checkpoint calibrated on validation, then evaluated.

`finish_run` fits the temperature and the unfamiliar-image threshold on the validation split,
evaluates the best checkpoint on test and validation (test also lab by lab) and marks the run
done. The splits are training/classifier.py's RunData: `.samples`, `.images`, `.labels`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine.rundir import mark_done
from ..inference.calibration import calibration_summary, fit_temperature, format_summary
from ..inference.runner import fit_shift_stats, predict_logits
from ..models import checkpoint as ckpt

# Held-out cells an adapted model needs before its temperature is refitted on them.
MIN_CELLS_FOR_TEMPERATURE = 100


def evaluate_by_source(model, meta, data, out: Path, progress: bool) -> None:
    """With several labs, each lab's share of a split evaluated alone, and a table of them."""
    from ..render.evaluation import write_summary
    from .evaluate import evaluate_samples

    names = sorted({s.source for s in data.samples})
    if len(names) < 2:
        return
    rows = []
    for name in names:
        idx = np.array([i for i, s in enumerate(data.samples) if s.source == name])
        result = evaluate_samples(model, meta, [data.samples[i] for i in idx], out / name, title=f"test split, {name}",
                                  images=np.asarray(data.images[idx]), progress=progress, explain_maps=False)
        rows.append(result.summary_row(name))
        print(f"  {name}: n={result.n}  accuracy {result.accuracy:.4f}  macro-F1 {result.macro_f1:.4f}")
    write_summary(out, rows, "Test split, one row per lab")


def finish_run(run_dir: Path, val, test, bf16: bool, progress: bool, train=None) -> None:
    """Fit the temperature and the unfamiliar-image threshold on validation, then evaluate the best
    checkpoint on test and val."""
    from .evaluate import evaluate_samples

    model, best_meta = ckpt.load_model(run_dir / "best")
    if val is None and train is not None and best_meta.adapted_from:
        # Adapted on too few cells to hold any out: the parent's temperature stays; the shift
        # statistics must still describe the new lab, so the training cells give the threshold too.
        print(f"too few cells to hold out: the temperature stays the parent's (T={best_meta.temperature:.3f}); "
              f"the unfamiliar-image threshold comes from the adaptation cells themselves")
        _, train_features = predict_logits(model, train.images, best_meta.mean, best_meta.std, 256, bf16,
                                           with_features=True)
        best_meta.shift_stats = fit_shift_stats(model, best_meta, train.images, train.labels, train_features)
        ckpt.save_checkpoint(run_dir / "best", model, best_meta)
    if val is not None:
        # Temperature scaling: one scalar fitted on the validation logits (accuracy unchanged);
        # inference divides the logits by meta.temperature.
        # One pass gives the logits for the temperature and the features for the shift threshold.
        val_logits, val_features = predict_logits(model, val.images, best_meta.mean, best_meta.std, 256, bf16,
                                                  with_features=True)
        wrong = int((val_logits.argmax(1) != val.labels).sum())
        if best_meta.adapted_from and (len(val.labels) < MIN_CELLS_FOR_TEMPERATURE or wrong == 0):
            # A few dozen held-out cells, often all right, drive the fitted T to its lower bound:
            # probabilities of 1.0 that no new cell deserves. The parent's T is the safer guess.
            print(f"{len(val.labels)} held-out cells, {wrong} wrong: too few to fit a temperature on; it stays "
                  f"the parent's (T={best_meta.temperature:.3f})")
        else:
            best_meta.temperature = fit_temperature(val_logits, val.labels)
        best_meta.calibration = calibration_summary(val_logits, val.labels, best_meta.temperature)
        print(format_summary(best_meta.calibration, "validation"))
        if train is not None:
            best_meta.shift_stats = fit_shift_stats(model, best_meta, train.images, train.labels, val_features)
            print(f"unfamiliar-image check: threshold {best_meta.shift_stats.threshold:.1f} (99th percentile of "
                  f"the validation cells' shift scores)")
        ckpt.save_checkpoint(run_dir / "best", model, best_meta)
    if test is not None:
        result = evaluate_samples(model, best_meta, test.samples, run_dir / "test", title="test split", run_dir=run_dir,
                                  images=test.images, progress=progress)
        print(f"test split: n={result.n}  accuracy {result.accuracy:.4f}  macro-F1 {result.macro_f1:.4f}  "
              f"-> {run_dir / 'test'}")
        evaluate_by_source(model, best_meta, test, run_dir / "test" / "by_source", progress)
    if val is not None:
        evaluate_samples(model, best_meta, val.samples, run_dir / "val", title="validation split", run_dir=run_dir,
                         images=val.images, progress=progress)
    mark_done(run_dir)
