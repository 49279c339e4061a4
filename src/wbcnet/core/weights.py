"""Tensors on disk: safetensors only, never pickle. A leaf module: it imports nothing of wbcnet's
but the error type, so models and checkpoints can both use it."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import WbcnetError


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def load_tensors(path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise WbcnetError(f"{path}: file not found") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise WbcnetError(f"{path}: not a readable safetensors file ({e})") from None


def part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix.` with the prefix taken off (a checkpoint's `model.` part, say)."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def read_pretrained(path) -> dict[str, torch.Tensor]:
    """Plain weights from a local .safetensors file: a wbcnet checkpoint (its `model.` part) or a
    bare state dict such as timm publishes. Pickled formats (.pt, .pth, .bin, .ckpt) are refused:
    unpickling a file runs whatever code it carries."""
    path = Path(path)
    if not path.is_file():
        raise WbcnetError(f"{path}: pretrained weights not found (wbcnet never downloads weights; "
                          f"pass a local .safetensors file)")
    if path.suffix != ".safetensors":
        raise WbcnetError(f"{path}: wbcnet reads weights only from .safetensors files and never unpickles "
                          f"{path.suffix or 'extensionless'} files; convert it once where you trust it, e.g. "
                          f"safetensors.torch.save_file(torch.load(f, weights_only=True), 'weights.safetensors')")
    tensors = load_tensors(path)
    return part(tensors, "model") or tensors
