"""Run a model over images -> predictions, and write an evaluation folder."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from . import plots
from .data.augment import normalize, to_float
from .data.cache import decode_images
from .data.scan import Sample, scan


def use_bf16(flag: bool | None = None) -> bool:
    """bf16 autocast only where the CPU does bf16 natively (AVX-512 BF16 or AMX)."""
    if flag is not None:
        return flag
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: np.ndarray, mean, std, batch_size: int = 128,
                   bf16: bool | None = None, channels_last: bool | None = None) -> np.ndarray:
    """uint8 (N, 3, S, S) -> float32 logits (N, C)."""
    bf16 = use_bf16(bf16)
    channels_last = bf16 if channels_last is None else channels_last
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(to_float(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out.append(model(x).float())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def write_evaluation(out, paths: list[str], y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                     title: str | None = None, run_dir=None, extra: dict | None = None) -> dict:
    """metrics.json, classification_report.txt, predictions.csv, confusion_matrix.png
    (and training_curves.png when `run_dir` has a metrics.csv)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    y_pred = probs.argmax(1)
    result = M.compute_metrics(y_true, y_pred, classes)
    result.update(extra or {})
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "classification_report.txt").write_text(M.report_text(y_true, y_pred, classes))
    with open(out / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "true", "predicted", "confidence"] + [f"p_{c}" for c in classes])
        for p, t, q, row in zip(paths, y_true, y_pred, probs):
            w.writerow([p, classes[t], classes[q], f"{row[q]:.4f}"] + [f"{v:.4f}" for v in row])
    plots.plot_confusion(result, out / "confusion_matrix.png", title)
    if run_dir is not None and (Path(run_dir) / "metrics.csv").exists():
        plots.plot_curves(Path(run_dir) / "metrics.csv", out / "training_curves.png")
    return result


def evaluate_samples(model, meta: dict, samples: list[Sample], out, title=None, run_dir=None,
                     batch_size: int = 128, workers: int | None = None, bf16: bool | None = None,
                     images: np.ndarray | None = None, progress: bool = True) -> dict:
    """Decode (unless `images` are given, aligned with `samples`), predict, and write the folder."""
    if images is None:
        decoded = decode_images([s.path for s in samples], meta["img_size"], workers, "decoding", progress)
        for path, reason in decoded.errors:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        samples = [samples[i] for i in decoded.index]
        images = decoded.images
    logits = predict_logits(model, images, meta["mean"], meta["std"], batch_size, bf16)
    probs = softmax(logits, meta.get("temperature", 1.0))
    y_true = np.array([s.label for s in samples], dtype=np.int64)
    return write_evaluation(out, [s.path for s in samples], y_true, probs, meta["classes"], title, run_dir,
                            extra={"checkpoint": meta.get("checkpoint_path"), "model": meta["model"]})


def evaluate_folder(model, meta: dict, data, out, run_dir=None, **kw) -> dict:
    """Evaluate on an ImageFolder/CSV whose classes are matched to the checkpoint's by name."""
    found = scan(data, classes=meta["classes"])
    for path, reason in found.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for folder in found.unknown_folders:
        print(f"warning: {folder} matches none of the model's classes {meta['classes']}; not evaluated", file=sys.stderr)
    for c in found.missing_classes:
        print(f"note: class '{c}' has no images in {data}; its row of the matrix stays empty", file=sys.stderr)
    if not found.samples:
        raise ValueError(f"{data}: no images of the model's classes {meta['classes']}")
    return evaluate_samples(model, meta, found.samples, out, title=f"{Path(data).name}", run_dir=run_dir, **kw)
