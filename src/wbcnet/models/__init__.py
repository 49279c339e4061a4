"""Model registry: `create_model(name, num_classes=...)` for our models and any timm model.

Our models expose `cam_layer()`, the last spatial feature map, for Grad-CAM. timm is imported
only when a name is not ours: it takes seconds to import.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.nn as nn

from ..core.errors import WbcnetError
from ..core.weights import read_pretrained
from .mhcnn import MHCNN
from .seed import SeedMHCNN

_REGISTRY = {
    "mhcnn": (MHCNN, "multi-head attention CNN (default): conv stem, self-attention blocks, attention pooling"),
    "seed-mhcnn": (SeedMHCNN, "the reference Keras model, ported faithfully (120 px, ~40.5 M parameters)"),
}

TIMM_EXAMPLES = ["resnet18", "convnext_atto", "efficientnet_b0", "vit_tiny_patch16_224", "mobilenetv3_small_100"]


def classifier_layer(model: nn.Module) -> nn.Module:
    """The layer that turns features into class scores: its input is the image's feature vector."""
    if hasattr(model, "get_classifier"):  # timm
        return model.get_classifier()
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def list_models() -> dict[str, str]:
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def default_img_size(name: str) -> int:
    if name in _REGISTRY:
        return _REGISTRY[name][0].default_img_size
    return 112


def full_model_args(name: str, given: dict) -> dict:
    """`given` plus every other constructor default of our models, so that a checkpoint never
    depends on a default that may change later. timm models keep what was given (their
    constructors take **kwargs, so there is no complete list to write out)."""
    if name not in _REGISTRY:
        return dict(given)
    params = inspect.signature(_REGISTRY[name][0].__init__).parameters
    unknown = set(given) - set(params) - {"self"}
    if unknown:
        raise WbcnetError(f"model '{name}' has no argument(s) {', '.join(sorted(unknown))}; "
                          f"it takes {', '.join(p for p in params if p not in ('self', 'num_classes'))}")
    full = {k: p.default for k, p in params.items() if k not in ("self", "num_classes")
            and p.default is not inspect.Parameter.empty}
    full.update(given)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}


def create_model(name: str, num_classes: int = 5, pretrained: str | Path | None = None, **kwargs) -> nn.Module:
    """Build a model by name. Names not ours go to timm, always built without downloading.

    `pretrained` is a local .safetensors weights file; layers whose shape differs (the
    classifier, for another class list) are left as initialised.
    """
    if name in _REGISTRY:
        full_model_args(name, kwargs)  # unknown arguments get a clear error, not a TypeError
        model = _REGISTRY[name][0](num_classes=num_classes, **kwargs)
    else:
        import timm

        if not timm.list_models(name):
            raise WbcnetError(f"unknown model '{name}': ours are {sorted(_REGISTRY)}; otherwise any timm model name "
                              f"(e.g. {', '.join(TIMM_EXAMPLES)})")
        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        except TypeError:
            if "img_size" not in kwargs:
                raise
            # Only size-aware families (ViT, Swin, ...) take img_size; CNNs take any size.
            kwargs.pop("img_size")
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def load_pretrained(model: nn.Module, path) -> None:
    state = read_pretrained(path)
    own = model.state_dict()
    state = {k: _resized_grid(v, own[k]) if k in own else v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise WbcnetError(f"{path}: none of its tensors match this model's layers")
    model.load_state_dict(usable, strict=False)


def _resized_grid(weights: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """A learned position grid (1, C, H, W) from a model of another input size, resized bilinearly
    to this model's grid, as the model itself resizes it for an input of another size (so a 112 px
    model can start a 160 px one); any other tensor as it is."""
    if weights.dim() == 4 and own.dim() == 4 and weights.shape[:2] == own.shape[:2] == (1, own.shape[1]) \
            and weights.shape[2:] != own.shape[2:]:
        return torch.nn.functional.interpolate(weights.float(), size=own.shape[2:], mode="bilinear",
                                               align_corners=False).to(own.dtype)
    return weights
