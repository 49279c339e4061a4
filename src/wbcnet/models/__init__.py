"""Model registry: `create_model(name, num_classes=...)` for our models and any timm model."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .mhcnn import MHCNN
from .seed import SeedMHCNN

_REGISTRY = {
    "mhcnn": (MHCNN, "multi-head attention CNN (default): conv stem, self-attention blocks, attention pooling"),
    "seed-mhcnn": (SeedMHCNN, "the reference Keras model, ported faithfully (120 px, ~40.5 M parameters)"),
}

TIMM_EXAMPLES = ["resnet18", "convnext_atto", "efficientnet_b0", "vit_tiny_patch16_224", "mobilenetv3_small_100"]


def list_models() -> dict[str, str]:
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def default_img_size(name: str) -> int:
    if name in _REGISTRY:
        return _REGISTRY[name][0].default_img_size
    return 112


def create_model(name: str, num_classes: int = 5, pretrained: str | Path | None = None, **kwargs) -> nn.Module:
    """Build a model by name. Names not ours go to timm, always built without downloading.

    `pretrained` is a local weights file (.safetensors; or a PyTorch file read with
    weights_only=True); the classifier is left out when its shape differs.
    """
    if name in _REGISTRY:
        model = _REGISTRY[name][0](num_classes=num_classes, **kwargs)
    else:
        import timm

        if not timm.list_models(name):
            raise ValueError(f"unknown model '{name}': ours are {sorted(_REGISTRY)}; otherwise any timm model name "
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
    from ..checkpoint import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights not found (wbcnet never downloads weights; "
                                f"pass a local .safetensors file)")
    state = read_state_dict(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path}: none of its tensors match this model's layers")
    model.load_state_dict(usable, strict=False)
