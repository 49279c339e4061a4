"""Checkpoints: safetensors for tensors, JSON for everything else; never pickle.

A checkpoint is two files side by side, `NAME.safetensors` and `NAME.json`. Tensor keys are
prefixed by the part they belong to (`model.`, `ema.`, `optim.`), the way torchvision's reference
scripts keep a checkpoint as a dict of named parts. The JSON is a `CheckpointMeta`.

Both files are written under temporary names and renamed, the JSON last, and the JSON holds the
SHA-256 of the weights file: flipped bytes on disk, or an interrupt between the two renames that
leaves new weights beside old metadata, are caught when the checkpoint is read, never used. A JSON
without the checksum is refused: nothing would tie its classes to the weights beside it.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .. import __version__
from ..core.errors import WbcnetError
from ..core.files import ASSETS, atomic_write
from ..core.weights import load_tensors, part, save_tensors, sha256_file
from . import create_model, full_model_args
from .shift import ShiftStats
from .zoo import DEFAULT, ZOO

SHIPPED = ZOO[DEFAULT].path.with_suffix("")  # the default model: `fast`


@dataclass
class CheckpointMeta:
    """Everything needed to rebuild a model and feed it as it was trained, and where it came from."""
    classes: list[str]
    model: str
    model_args: dict                      # every constructor argument, defaults included
    img_size: int
    mean: list[float]                     # input normalisation (after /255)
    std: list[float]
    temperature: float = 1.0              # softmax(logits / T), fitted on validation
    preprocess: dict = field(default_factory=dict)  # how an image becomes the model's input (see data/)
    sources: list[dict] = field(default_factory=list)  # training data: name, path, images per split
    seed: int | None = None
    config: dict | None = None            # the TrainConfig of the run
    git_commit: str | None = None
    wbcnet_version: str = __version__
    best_epoch: int | None = None
    val_macro_f1: float | None = None
    val_accuracy: float | None = None
    calibration: dict | None = None       # ECE/NLL on validation before and after the temperature
    shift: dict | None = None             # the unfamiliar-image check: method, threshold, cells it came from
    adapted_from: dict | None = None      # parent checkpoint and adaptation data, for `adapt`
    pretrained: dict | None = None        # the weights the run started from (--pretrained): path, SHA-256, backbone's cells
    distilled_from: dict | None = None    # the teacher (--teacher): checkpoint, SHA-256, size, loss weight, temperature
    train_state: dict | None = None       # last.* only: epoch, best_f1, since_best, history
    optimizer: dict | None = None         # last.* only: the non-tensor part of the optimizer state
    weights_sha256: str | None = None     # of NAME.safetensors; set when saved
    card: dict | None = None              # a zoo model's: what scripts/ship_model.py measured (figures, speed)
    # Run-time facts, never saved in the JSON: the .safetensors file this was read from, and the
    # unfamiliar-image statistics, whose arrays live in the weights file under `shift.`.
    path: Path | None = field(default=None, compare=False, repr=False, metadata={"saved": False})
    shift_stats: ShiftStats | None = field(default=None, compare=False, repr=False, metadata={"saved": False})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("saved", True)}

    @classmethod
    def from_dict(cls, d: dict, where="checkpoint") -> "CheckpointMeta":
        missing = [k for k in ("classes", "model", "img_size", "mean", "std") if k not in d]
        if missing:
            raise WbcnetError(f"{where}: not a wbcnet checkpoint (no {', '.join(repr(k) for k in missing)})")
        known = {f.name for f in fields(cls) if f.metadata.get("saved", True)}
        d = dict(d)
        if "data" in d and not d.get("sources"):  # checkpoints before multi-source training
            d["sources"] = [{"name": "data", "path": d["data"]}]
        return cls(**{k: v for k, v in d.items() if k in known})


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


def optimizer_from_parts(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in saved.get("plain_state", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def save_checkpoint(stem, model: torch.nn.Module, meta: CheckpointMeta, optimizer=None, ema=None) -> Path:
    """Write STEM.safetensors and STEM.json atomically (JSON last); returns the .safetensors path.
    `meta` is not changed: the saved copy gets the weights' hash and this wbcnet's version."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    saved = meta.to_dict()
    saved["wbcnet_version"] = __version__
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    if optimizer is not None:
        t, saved["optimizer"] = optimizer_to_parts(optimizer)
        tensors.update(t)
    if meta.shift_stats is not None:
        saved["shift"] = meta.shift_stats.summary()
        tensors.update({f"shift.{k}": torch.from_numpy(v) for k, v in meta.shift_stats.tensors().items()})
    weights, info = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    # The inner block is left first, so the weights are renamed into place before the JSON.
    with atomic_write(info) as tmp_info, atomic_write(weights) as tmp_weights:
        try:
            save_tensors(tensors, tmp_weights)
        except Exception as e:  # safetensors reports a full disk as its own error type: an OSError here
            if isinstance(e, OSError) or "os error 28" not in str(e):
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(weights)) from None
        saved["weights_sha256"] = sha256_file(tmp_weights)
        tmp_info.write_text(json.dumps(saved, indent=2, default=str))
    return weights


def resolve_checkpoint(path=None) -> Path:
    """A zoo model's name (`fast`, `accurate`; None: `fast`), a run folder (its best checkpoint),
    or a .safetensors or .json file. A name wins over a folder of that name: write ./NAME for it."""
    name = DEFAULT if path is None else str(path)
    if name in ZOO:
        if not ZOO[name].installed:
            raise WbcnetError(f"--model {name}: this install has no {name} model ({ZOO[name].path} is missing); "
                              f"installed: {', '.join(m.name for m in ZOO.values() if m.installed) or 'none'}")
        return ZOO[name].path
    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    elif path.suffix in (".json", ""):
        path = path.with_suffix(".safetensors")
    if not path.exists():
        raise WbcnetError(f"{path}: checkpoint not found")
    if not path.with_suffix(".json").exists():
        raise WbcnetError(f"{path.with_suffix('.json')}: checkpoint metadata missing beside the weights")
    return path


def read_checkpoint(path=None) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Tensors and metadata of a checkpoint, after checking that the weights are the ones the
    metadata was written for."""
    path = resolve_checkpoint(path)
    info = path.with_suffix(".json")
    try:
        raw = json.loads(info.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WbcnetError(f"{info}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise WbcnetError(f"{info}: not a wbcnet checkpoint (not a JSON object)")
    meta = CheckpointMeta.from_dict(raw, str(info))
    if not meta.weights_sha256:
        # Without the checksum nothing ties these weights to this metadata: edited classes or a
        # file from another save would load silently and answer with the wrong names.
        raise WbcnetError(f"{info}: no weights_sha256, so the weights cannot be checked against this metadata "
                          f"(edited by hand, or not written by wbcnet); refused. If you trust both files, add "
                          f"\"weights_sha256\": \"<the sha256sum of {path.name}>\" to it")
    if sha256_file(path) != meta.weights_sha256:
        raise WbcnetError(f"{path}: the weights do not match their metadata's checksum (corrupted on disk, or "
                          f"an interrupted write left weights and {info.name} from different saves)")
    tensors = load_tensors(path)
    meta.path = path
    stats = part(tensors, "shift")
    if meta.shift and stats:
        meta.shift_stats = ShiftStats.from_parts(meta.shift, {k: v.numpy() for k, v in stats.items()})
    return tensors, meta


def build_model(meta: CheckpointMeta) -> torch.nn.Module:
    return create_model(meta.model, num_classes=len(meta.classes), **meta.model_args)


def load_model(path=None, use_ema: bool = True) -> tuple[torch.nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint describes; returns (model in eval mode, metadata)."""
    tensors, meta = read_checkpoint(path)
    model = build_model(meta)
    weights = (part(tensors, "ema") if use_ema else {}) or part(tensors, "model")
    load_weights(model, weights, meta.path)
    return model.eval(), meta


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise WbcnetError(f"{where}: the weights do not fit the model its metadata describes ({first})") from None


def new_meta(classes, model: str, model_args: dict, img_size: int, mean, std, **kw) -> CheckpointMeta:
    """Metadata for a new model, with every constructor argument written out."""
    return CheckpointMeta(classes=list(classes), model=model, model_args=full_model_args(model, model_args),
                          img_size=int(img_size), mean=list(mean), std=list(std), git_commit=git_commit(), **kw)


__all__ = ["CheckpointMeta", "SHIPPED", "save_checkpoint", "read_checkpoint", "load_model", "build_model",
           "resolve_checkpoint", "new_meta", "optimizer_to_parts", "optimizer_from_parts"]
