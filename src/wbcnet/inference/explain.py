"""Where did the model look? Grad-CAM and attention-pooling maps over cells, and error galleries.

Grad-CAM (Selvaraju et al., 2017) is written out here (a forward hook and one autograd.grad call)
rather than taken from the `grad-cam` package: that package pulls in opencv-python and ttach for
what is twenty lines, and this way it runs on any model wbcnet builds with no new dependency.

    weights_c = mean over space of d(logit of the target class) / d(activation channel c)
    map       = ReLU(sum_c weights_c * activation_c), upsampled to the image, scaled to [0, 1]

The target class is the predicted one: the map shows what drove the answer the model gave,
which is what to look at when that answer is wrong.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import normalize, to_float
from ..render.tiles import plot_explanation_grid


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last spatial feature map before the model pools it away.

    Our models name it themselves (`cam_layer()`). timm: the last entry of `feature_info`
    (layer4 of a ResNet, the last stage of a ConvNeXt, the last block of a ViT); otherwise the
    last Conv2d in the model."""
    if hasattr(model, "cam_layer"):
        return model.cam_layer()
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.info[-1]
        try:
            return model.get_submodule(last["module"])
        except (AttributeError, KeyError):
            pass
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__}: no convolution to take Grad-CAM from; pass `layer`")
    return convs[-1]


def _as_feature_map(act: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """(N, C, h, w) as it is; a ViT's (N, tokens, D) without its class/register tokens, on its grid."""
    if act.ndim == 4:
        return act
    if act.ndim == 3:
        n, t, d = act.shape
        prefix = getattr(model, "num_prefix_tokens", t - math.isqrt(t) ** 2)
        side = math.isqrt(t - prefix)
        return act[:, prefix:prefix + side * side].transpose(1, 2).reshape(n, d, side, side)
    raise ValueError(f"Grad-CAM needs a spatial activation, got shape {tuple(act.shape)}")


def _to_unit(maps: torch.Tensor, size: int, stretch: bool = False) -> np.ndarray:
    """(N, h, w) -> (N, size, size) bilinearly upsampled, each map divided by its own maximum
    (`stretch`: its minimum to 0 and maximum to 1)."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    low = up.flatten(1).min(1).values[:, None, None] if stretch else torch.zeros(1)
    span = (up.flatten(1).max(1).values[:, None, None] - low).clamp_min(1e-12)
    return ((up - low) / span).clamp(0, 1).numpy()


def grad_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module, target: torch.Tensor | None = None) -> np.ndarray:
    """Grad-CAM maps (N, S, S) in [0, 1] for normalised images `x` (N, 3, S, S), for class `target`
    per image (default: the predicted class). The model's parameters get no .grad."""
    kept = {}

    def swap_in_leaf(module, inputs, output):
        # Continue the forward pass from a detached copy that requires grad: the backward pass then
        # stops at this layer (nothing before it is differentiated), and it works just the same
        # when the weights are frozen (an EMA copy). The clone keeps the leaf safe from in-place ops.
        kept["act"] = output.detach().requires_grad_(True)
        return kept["act"].clone()

    hook = layer.register_forward_hook(swap_in_leaf)
    try:
        with torch.enable_grad():
            logits = model(x)
            target = logits.argmax(1) if target is None else target
            score = logits.gather(1, target.view(-1, 1)).sum()  # images are independent in eval mode
            grad = torch.autograd.grad(score, kept["act"])[0]
    finally:
        hook.remove()
    act, grad = _as_feature_map(kept["act"].detach(), model), _as_feature_map(grad, model)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * act).sum(1))
    return _to_unit(cam, x.shape[-1])


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """mhcnn's attention-pooling weights over its token grid: maps (N, S, S) stretched to [0, 1],
    and each map's peak as a multiple of an even spread (1.0: the model looked everywhere alike).
    Stretched, because the weights of a model that attends broadly differ by a few percent, and
    divided by their maximum they would colour the whole cell the same; the peak says how strong
    the pattern is. None for models without `forward_with_attention`."""
    if not hasattr(model, "forward_with_attention"):
        return None
    attn = model.forward_with_attention(x)[1]
    peak = attn.flatten(1).max(1).values * attn[0].numel()
    return _to_unit(attn, x.shape[-1], stretch=True), peak.numpy()


def explain_images(model: nn.Module, images: np.ndarray, mean, std, target: np.ndarray | None = None,
                   layer: nn.Module | None = None, batch_size: int = 32) -> dict[str, np.ndarray]:
    """uint8 (N, 3, S, S) -> {'Grad-CAM': (N, S, S)}, for mhcnn also 'attention': (N, S, S) and
    'attention_peak': (N,) (see attention_maps)."""
    model.eval()
    layer = layer or default_target_layer(model)
    cams, attns, peaks = [], [], []
    for i in range(0, len(images), batch_size):
        x = normalize(to_float(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))), mean, std)
        t = None if target is None else torch.as_tensor(target[i:i + batch_size], dtype=torch.long)
        cams.append(grad_cam(model, x, layer, t))
        a = attention_maps(model, x)
        if a is not None:
            attns.append(a[0])
            peaks.append(a[1])
    out = {"Grad-CAM": np.concatenate(cams) if cams else np.zeros((0,) + images.shape[2:], np.float32)}
    if attns:
        out["attention"], out["attention_peak"] = np.concatenate(attns), np.concatenate(peaks)
    return out


def pick_per_class(y_true: np.ndarray, num_classes: int, per_class: int = 3, seed: int = 0) -> list[np.ndarray]:
    """A fixed random choice of up to `per_class` cells of each true class, right or wrong."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(y_true == c)
        out.append(np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)) if len(idx) else idx)
    return out


def pick_errors(y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray, k: int = 12) -> np.ndarray:
    """The `k` most confident mistakes: the ones a threshold on confidence would not catch."""
    wrong = np.flatnonzero(y_true != y_pred)
    return wrong[np.argsort(-confidence[wrong], kind="stable")[:k]]


def _caption(classes, t, p, conf) -> str:
    return f"true {classes[t]}\npred {classes[p]} {conf:.2f}"


def write_explanations(model: nn.Module, meta: dict, images: np.ndarray, y_true: np.ndarray, probs: np.ndarray,
                       out, per_class: int = 3, n_errors: int = 12, seed: int = 0) -> dict[str, Path]:
    """explain_by_class.png (sample cells of each true class) and explain_errors.png (the most
    confident mistakes), each cell with its Grad-CAM (and for mhcnn attention) map for the
    predicted class. Maps are computed for these few cells only, so this takes seconds."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = meta.classes
    y_pred, conf = probs.argmax(1), probs.max(1)
    by_class = pick_per_class(y_true, len(classes), per_class, seed)
    errors = pick_errors(y_true, y_pred, conf, n_errors)
    chosen = np.unique(np.concatenate(by_class + [errors]).astype(np.int64))
    if not len(chosen):
        return {}
    maps = explain_images(model, images[chosen], meta.mean, meta.std, target=y_pred[chosen])
    peak = maps.pop("attention_peak", None)
    notes = {"attention": [f" \u00d7{p:.2f}" for p in peak]} if peak is not None else {}
    about = "; attention \u00d7N: its peak is N times an even spread" if peak is not None else ""
    # Index everything by position in `chosen` so the plots see a small, self-contained set.
    pos = {int(i): k for k, i in enumerate(chosen)}
    sub_images = images[chosen]
    captions = {k: _caption(classes, y_true[i], y_pred[i], conf[i]) for i, k in pos.items()}
    correct = {k: bool(y_true[i] == y_pred[i]) for i, k in pos.items()}
    written = {}
    rows = [np.array([pos[int(i)] for i in idx], dtype=np.int64) for idx in by_class]
    written["explain_by_class"] = plot_explanation_grid(
        sub_images, maps, rows, captions, correct, out / "explain_by_class.png",
        f"Where the model looked, {per_class} cells per true class (maps for the predicted class{about})",
        row_labels=list(classes), per_row=per_class, notes=notes)
    if len(errors):
        per_row = 3
        err_rows = [np.array([pos[int(i)] for i in errors], dtype=np.int64)]
        written["explain_errors"] = plot_explanation_grid(
            sub_images, maps, err_rows, captions, correct, out / "explain_errors.png",
            f"The {len(errors)} most confident mistakes (maps for the predicted class{about})", per_row=per_row,
            notes=notes)
    return written
