"""Checkpoints: safetensors for tensors, JSON for everything else; never pickle.

A checkpoint is two files side by side, `NAME.safetensors` and `NAME.json`. Tensor keys are
prefixed by the part they belong to (`model.`, `ema.`, `optim.`), the way torchvision's reference
scripts keep a checkpoint as a dict of named parts. Both files are written to a temporary name
and renamed, so an interrupt leaves either the old checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import __version__

SHIPPED = Path(__file__).parent / "assets" / "model"


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def optimizer_to_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, plain = {}, {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                plain[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def optimizer_from_parts(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("plain_state", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(stem, model: torch.nn.Module, meta: dict, optimizer=None, ema=None) -> Path:
    """Write STEM.safetensors and STEM.json atomically; returns the .safetensors path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = dict(meta, wbcnet_version=__version__)
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    if optimizer is not None:
        t, m = optimizer_to_parts(optimizer)
        tensors.update({k: v.contiguous().cpu() for k, v in t.items()})
        meta["optimizer"] = m
    weights, info = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    _atomic_write_bytes(weights, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _atomic_write_bytes(info, lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    return weights


def resolve_checkpoint(path=None) -> Path:
    """A run folder (its best checkpoint), a .safetensors or .json file, or None for the shipped model."""
    if path is None:
        if not SHIPPED.with_suffix(".safetensors").exists():
            raise FileNotFoundError("no --checkpoint given and this install has no shipped model "
                                    f"({SHIPPED}.safetensors is missing)")
        return SHIPPED.with_suffix(".safetensors")
    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    elif path.suffix in (".json", ""):
        path = path.with_suffix(".safetensors")
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if not path.with_suffix(".json").exists():
        raise FileNotFoundError(f"{path.with_suffix('.json')}: checkpoint metadata missing beside the weights")
    return path


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    path = resolve_checkpoint(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.with_suffix('.json')}: not valid JSON ({e})") from None
    for key in ("classes", "model", "img_size", "mean", "std"):
        if key not in meta:
            raise ValueError(f"{path.with_suffix('.json')}: not a wbcnet checkpoint (no '{key}')")
    return tensors, meta


def part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Plain weights from a local file: safetensors, a wbcnet checkpoint, or a weights-only torch file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = load_file(str(path))
        return part(tensors, "model") or tensors
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(path=None, use_ema: bool = True):
    """Rebuild the model a checkpoint describes; returns (model in eval mode, metadata)."""
    from .models import create_model

    tensors, meta = read_checkpoint(path)
    model = create_model(meta["model"], num_classes=len(meta["classes"]), **meta.get("model_args", {}))
    weights = (part(tensors, "ema") if use_ema else {}) or part(tensors, "model")
    model.load_state_dict(weights)
    meta["checkpoint_path"] = str(resolve_checkpoint(path))
    return model.eval(), meta
