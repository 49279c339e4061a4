"""Running a model over decoded images: the one place that chooses precision and memory layout,
normalises, batches, and turns logits into probabilities with the checkpoint's temperature.

evaluate, predict, export, train (validation) and the benchmarks all come through here, so a
model gives the same answer whichever command runs it. Imports torch and numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .calibration import softmax
from .data.augment import normalize, to_float


def use_bf16(flag: bool | None = None) -> bool:
    """bf16 autocast only where the CPU does bf16 natively (AVX-512 BF16 or AMX)."""
    if flag is not None:
        return flag
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def predict_logits(model: torch.nn.Module, images: np.ndarray, mean, std, batch_size: int = 128,
                   bf16: bool | None = None, channels_last: bool | None = None) -> np.ndarray:
    """uint8 (N, 3, S, S) -> float32 logits (N, C)."""
    bf16 = use_bf16(bf16)
    channels_last = bf16 if channels_last is None else channels_last
    model.eval()
    if channels_last:
        # Outside inference mode: converting the weights inside it would turn them into inference
        # tensors, and the model could never be run with gradients again (Grad-CAM, training).
        model = model.to(memory_format=torch.channels_last)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = normalize(to_float(torch.from_numpy(np.array(images[i:i + batch_size]))), mean, std)  # copy: caches are read-only
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out.append(model(x).float())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


@dataclass
class Predictions:
    logits: np.ndarray          # (N, C) raw
    probs: np.ndarray           # (N, C) softmax(logits / temperature)
    temperature: float

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(1)


def run_model(model: torch.nn.Module, meta, images: np.ndarray, batch_size: int = 128, bf16: bool | None = None,
              backend=None) -> Predictions:
    """Probabilities for decoded uint8 images, as the checkpoint `meta` says to compute them.
    `backend` (images -> logits, e.g. ONNX Runtime) replaces the PyTorch model."""
    n_classes = len(meta.classes)
    if len(images) == 0:
        empty = np.zeros((0, n_classes), dtype=np.float32)
        return Predictions(empty, empty.astype(np.float64), meta.temperature)
    logits = backend(images) if backend is not None else predict_logits(model, images, meta.mean, meta.std,
                                                                         batch_size, bf16)
    return Predictions(logits, softmax(logits, meta.temperature), meta.temperature)
