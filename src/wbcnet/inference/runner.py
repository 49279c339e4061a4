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

from ..data.augment import normalize, to_float
from ..models import classifier_layer
from .calibration import softmax


def resolve_device(name: str = "cpu") -> torch.device:
    """"auto": a CUDA GPU when there is one, else the CPU."""
    from ..core.errors import WbcnetError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise WbcnetError(f"device {name}: no CUDA GPU is visible to PyTorch here (use --device cpu)")
    return torch.device(name)


def use_bf16(flag: bool | None = None, device: torch.device | str = "cpu") -> bool:
    """bf16 autocast on GPUs, and on CPUs that do bf16 natively (AVX-512 BF16 or AMX)."""
    if flag is not None:
        return flag
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 turns and mirror images of a batch: a cell on a slide has no up and no left."""
    turns = [torch.rot90(x, k, (2, 3)) for k in range(4)]
    return turns + [t.flip(3) for t in turns]


def predict_logits(model: torch.nn.Module, images: np.ndarray, mean, std, batch_size: int = 128,
                   bf16: bool | None = None, channels_last: bool | None = None, tta: bool = False,
                   with_features: bool = False):
    """uint8 (N, 3, S, S) -> float32 logits (N, C), computed on the device the model is on.
    `tta`: the mean logits over the 8 turns and mirror images of each cell (8x the work).
    `with_features`: also the classifier's input, (N, D), for the unfamiliar-image check."""
    device = next(model.parameters()).device
    bf16 = use_bf16(bf16, device)
    channels_last = bf16 if channels_last is None else channels_last
    model.eval()
    if channels_last:
        # Outside inference mode: converting the weights inside it would turn them into inference
        # tensors, and the model could never be run with gradients again (Grad-CAM, training).
        model = model.to(memory_format=torch.channels_last)
    out, feats = [], []
    seen: list[torch.Tensor] = []
    hook = classifier_layer(model).register_forward_pre_hook(lambda _, inp: seen.append(inp[0].float())) \
        if with_features else None
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.array(images[i:i + batch_size])).to(device)  # copy: caches are read-only
                x = normalize(to_float(batch), mean, std)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                views = dihedral(x) if tta else [x]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out.append(torch.stack([model(v).float() for v in views]).mean(0))
                if with_features:
                    feats.append(torch.stack(seen).mean(0))
                    seen.clear()
    finally:
        if hook is not None:
            hook.remove()
    logits = torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), dtype=np.float32)
    if not with_features:
        return logits
    return logits, (torch.cat(feats).cpu().numpy() if feats else np.zeros((0, 0), dtype=np.float32))


@dataclass
class Predictions:
    logits: np.ndarray          # (N, C) raw
    probs: np.ndarray           # (N, C) softmax(logits / temperature)
    temperature: float
    shift_score: np.ndarray | None = None   # (N,) distance from the training cells; None: no check
    unfamiliar: np.ndarray | None = None    # (N,) bool: shift_score above the checkpoint's threshold

    def referred(self, min_confidence: float = 0.0) -> np.ndarray:
        """Cells to hand to a person: unfamiliar, or less confident than `min_confidence`."""
        low = self.confidence < min_confidence
        return low if self.unfamiliar is None else low | self.unfamiliar

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(1)


def fit_shift_stats(model: torch.nn.Module, meta, train_images: np.ndarray, train_labels: np.ndarray,
                    val_features: np.ndarray, limit: int = 6000, batch_size: int = 256):
    """The unfamiliar-image statistics for `model` (models/shift.py): class means and covariance of the
    features of up to `limit` training cells (evenly spaced, unaugmented), the threshold from
    the validation cells' features (from the caller's own pass over them)."""
    from ..models.shift import fit_shift

    pick = np.linspace(0, len(train_images) - 1, min(limit, len(train_images))).astype(int)
    _, train_f = predict_logits(model, np.asarray(train_images[pick]), meta.mean, meta.std, batch_size,
                                with_features=True)
    return fit_shift(train_f, np.asarray(train_labels)[pick], val_features)


def run_model(model: torch.nn.Module, meta, images: np.ndarray, batch_size: int = 128, bf16: bool | None = None,
              backend=None, tta: bool = False, shift_check: bool = True) -> Predictions:
    """Probabilities for decoded uint8 images, as the checkpoint `meta` says to compute them, and
    the unfamiliar-image check where the checkpoint carries its statistics (`shift_check`).
    `backend` (images -> logits, e.g. ONNX Runtime) replaces the PyTorch model and has no check;
    `tta` averages over the 8 turns and mirror images of each cell."""
    n_classes = len(meta.classes)
    check = shift_check and backend is None and getattr(meta, "shift_stats", None) is not None
    if len(images) == 0:
        empty = np.zeros((0, n_classes), dtype=np.float32)
        if not check:
            return Predictions(empty, empty.astype(np.float64), meta.temperature)
        return Predictions(empty, empty.astype(np.float64), meta.temperature, np.zeros(0), np.zeros(0, dtype=bool))
    if backend is not None:
        logits = backend(images)
        return Predictions(logits, softmax(logits, meta.temperature), meta.temperature)
    out = predict_logits(model, images, meta.mean, meta.std, batch_size, bf16, tta=tta, with_features=check)
    if not check:
        return Predictions(out, softmax(out, meta.temperature), meta.temperature)
    logits, features = out
    score = meta.shift_stats.score(features)
    return Predictions(logits, softmax(logits, meta.temperature), meta.temperature, score,
                       score > meta.shift_stats.threshold)
