"""A pretrained backbone: a model's weights without its classifier, and what they were made for.

`wbcnet pretrain` (training/pretrain.py) writes OUT/backbone.safetensors and OUT/backbone.json; `wbcnet
train --pretrained OUT` (train.build_model) reads them back here. The JSON says which model, which
constructor arguments and which preprocessing (size, cell crop, finder, stain) the weights were
learned for: features learned on 112 px cell crops mean something else to a model fed 64 px whole
pictures, so a run that differs is refused rather than started from weights that do not fit it.
Every backbone tensor must land on a layer of the new model (strict); only the classifier, whose
classes the backbone never saw, starts fresh. The weights are checked against their SHA-256.

Imports torch and wbcnet's leaf modules only, never lightly: training from a backbone needs no
pretraining library.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..core.errors import WbcnetError
from ..core.weights import load_tensors, sha256_file

FORMAT = "wbcnet-backbone"
STEM = "backbone"
# Constructor arguments that change no weight: a backbone fits a model that differs in them.
_WEIGHTLESS = ("dropout", "attn_dropout", "drop_rate", "drop_path_rate")


@dataclass
class BackboneMeta:
    """backbone.json: the model the weights fit, how its inputs were made, and how it was trained."""
    model: str
    model_args: dict                    # every constructor argument, img_size included
    img_size: int
    preprocess: dict                    # Preprocess.to_dict(): crop, context, finder (and its weights), stain
    mean: list[float]                   # input normalisation used in pretraining (after /255)
    std: list[float]
    method: str = "simclr"
    recipe: dict = field(default_factory=dict)      # pretrain.Recipe: epochs, batch size, lr, temperature, ...
    sources: list[dict] = field(default_factory=list)  # name, path, kind, cells
    cells: int = 0
    seed: int = 0
    final_loss: float | None = None
    git_commit: str | None = None
    wbcnet_version: str | None = None
    weights_sha256: str | None = None
    format: str = FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where) -> "BackboneMeta":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise WbcnetError(f"{where}: not a wbcnet backbone (written by wbcnet pretrain)")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def backbone_files(path) -> tuple[Path, Path] | None:
    """(weights, JSON) when `path` is a pretraining folder or its backbone.safetensors/.json, else None
    (a plain .safetensors file: create_model's shape-tolerant loading handles it)."""
    path = Path(path)
    if path.is_dir():
        return path / f"{STEM}.safetensors", path / f"{STEM}.json"
    if path.suffix in (".safetensors", ".json") and path.with_suffix(".json").is_file():
        try:
            is_backbone = json.loads(path.with_suffix(".json").read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            is_backbone = False
        if is_backbone:
            return path.with_suffix(".safetensors"), path.with_suffix(".json")
    return None


def read_backbone(path) -> tuple[dict[str, torch.Tensor], BackboneMeta]:
    """The backbone's tensors and metadata, after checking the weights against their SHA-256."""
    found = backbone_files(path)
    if found is None:
        raise WbcnetError(f"{path}: not a pretraining folder (no {STEM}.json beside the weights)")
    weights, info = found
    if not info.is_file() or not weights.is_file():
        raise WbcnetError(f"{path}: no {weights.name} and {info.name} here (did wbcnet pretrain finish? "
                          f"continue it with --resume)")
    try:
        meta = BackboneMeta.from_dict(json.loads(info.read_text()), info)
    except (ValueError, UnicodeDecodeError) as e:
        raise WbcnetError(f"{info}: not valid JSON ({e})") from None
    if not meta.weights_sha256 or sha256_file(weights) != meta.weights_sha256:
        raise WbcnetError(f"{weights}: the weights do not match the SHA-256 in {info.name} (changed or damaged "
                          f"on disk); run wbcnet pretrain again")
    return load_tensors(weights), meta


def check_fits(meta: BackboneMeta, model: str, model_args: dict, img_size: int, preprocess: dict, where) -> None:
    """Refuse, in one line, a run whose model or inputs differ from what the backbone learned on.
    `model_args`: the run's, every constructor argument written out (models.full_model_args)."""
    if meta.model != model:
        raise WbcnetError(f"{where}: the backbone is a {meta.model}, this run trains a {model}; pretrain for "
                          f"this model (wbcnet pretrain --config YOUR_CONFIG)")
    if int(meta.img_size) != int(img_size):
        raise WbcnetError(f"{where}: the backbone learned on {meta.img_size} px inputs, this run uses {img_size} px; "
                          f"give --img-size {meta.img_size} or pretrain at {img_size} px")
    differ = [k for k in sorted(set(meta.model_args) | set(model_args))
              if k not in _WEIGHTLESS and meta.model_args.get(k) != model_args.get(k)]
    if differ:
        what = ", ".join(f"{k} {meta.model_args.get(k)!r} (this run {model_args.get(k)!r})" for k in differ)
        raise WbcnetError(f"{where}: the backbone's model_args differ from this run's: {what}; pretrain with this "
                          f"run's --config")
    if dict(meta.preprocess) != dict(preprocess):
        differ = [k for k in sorted(set(meta.preprocess) | set(preprocess)) if meta.preprocess.get(k) != preprocess.get(k)]
        what = ", ".join(f"{k} {meta.preprocess.get(k, 'none')!r} (this run {preprocess.get(k, 'none')!r})"
                         for k in differ)
        raise WbcnetError(f"{where}: the backbone learned on other inputs: {what}; train with the backbone's "
                          f"preprocessing or pretrain with this run's --config")


def head_prefix(model: torch.nn.Module) -> str:
    """The state-dict prefix of the classifier (models.classifier_layer), which a backbone leaves out."""
    from . import classifier_layer

    head = classifier_layer(model)
    name = next((n for n, m in model.named_modules() if m is head), None)
    if not name:
        raise WbcnetError(f"{type(model).__name__}: no classifier layer found to leave out of the backbone")
    return name


def backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors without the classifier's."""
    prefix = head_prefix(model) + "."
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}


def load_backbone(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where) -> None:
    """Every tensor of the backbone into `model`, which must have exactly those outside its classifier."""
    own = backbone_state(model)
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or extra or wrong:
        first = (f"{len(missing)} of the model's tensors missing, e.g. {missing[0]}" if missing else
                 f"{len(extra)} tensors the model lacks, e.g. {extra[0]}" if extra else
                 f"{wrong[0]} is {tuple(tensors[wrong[0]].shape)} there, {tuple(own[wrong[0]].shape)} here")
        raise WbcnetError(f"{where}: the backbone's weights do not fit this model ({first})")
    model.load_state_dict(tensors, strict=False)  # strict over the backbone's keys, checked above; the head stays


def write_backbone(out, model: torch.nn.Module, meta: BackboneMeta) -> Path:
    """OUT/backbone.safetensors then OUT/backbone.json (with the weights' SHA-256), each atomically."""
    from ..core.files import atomic_write, write_text_atomic
    from ..core.weights import save_tensors

    out = Path(out)
    weights = out / f"{STEM}.safetensors"
    with atomic_write(weights) as tmp:
        save_tensors(backbone_state(model), tmp)
        meta.weights_sha256 = sha256_file(tmp)
    write_text_atomic(out / f"{STEM}.json", json.dumps(meta.to_dict(), indent=2))  # last: the backbone counts once it is there
    return weights


__all__ = ["BackboneMeta", "backbone_files", "read_backbone", "check_fits", "load_backbone", "backbone_state",
           "head_prefix", "write_backbone", "FORMAT"]
