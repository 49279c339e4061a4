"""One config object per training run, saved beside its results as YAML.

`TrainConfig` is the single description of a run: the YAML recipe files, the `wbcnet train`
flags (built from the fields below, so they cannot drift apart) and the run folder's
config.yaml are all views of it. `validate()` checks values as well as names.
"""
from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, fields

import yaml

from ..cells.stain import STAINS
from ..core.errors import WbcnetError
from ..core.flags import add_flags, flag, flag_name, given_values
from ..data.augment_config import AugmentConfig


@dataclass
class TrainConfig:
    data: str | list | dict | None = flag(None, "training data: an ImageFolder (one folder per class) or a CSV "
                                          "manifest path,label[,group]; repeat as NAME=PATH for several labs",
                                          append=True, metavar="[NAME=]PATH")
    group_by: str = flag("auto", "how cells are grouped so a group stays on one side of a split: auto (fields of "
                         "view from file names, one group per image where those look like labels), name, column, "
                         "none, or regex:PATTERN")
    val_data: str | None = flag(None, "separate validation set (default: split from --data)", name="--val")
    test_data: str | None = flag(None, "separate test set (default: split from --data)", name="--test")
    classes: list[str] | None = flag(None, "comma-separated class names to train on (default: every class folder)")
    out: str | None = flag(None, "new run folder (default runs/<model>-<time>); never overwritten")
    model: str = flag("mhcnn", "mhcnn, seed-mhcnn, or a timm model name")
    model_args: dict = flag({}, "constructor arguments of the model (YAML only)", cli=False)
    pretrained: str | None = flag(None, "weights to start from: a wbcnet pretrain folder (its backbone, every layer "
                                  "but the classifier) or a local .safetensors file (the layers that fit); never "
                                  "downloaded")
    init_from: str | None = flag(None, "a wbcnet checkpoint to continue from (wbcnet adapt): its model, weights, "
                                 "classes, preprocessing and input normalisation", cli=False)
    teacher: str | None = flag(None, "distil from this wbcnet checkpoint or run folder (a larger model, maybe at a "
                               "higher resolution): training images are decoded at its size, it scores every "
                               "augmented batch, and this model learns from its answers and the labels (training/distill.py)")
    distill_weight: float = flag(0.5, "with --teacher: the teacher's share of the loss (the labels' is the rest)")
    distill_temperature: float = flag(2.0, "with --teacher: the softmax temperature of the teacher's term")
    img_size: int | None = flag(None, "training size in pixels (default: the model's, 112 for mhcnn)")
    crop: str = flag("none", "what the model sees: the whole picture (none), or a square around the white cell "
                     "found in it (cell), at the same scale whatever the lab's framing", choices=("none", "cell"))
    crop_context: float = flag(1.5, "with --crop cell: the crop's side in cell diameters")
    stain: str = flag("none", "redraw every image in one reference nucleus stain (nucleus), so that labs' "
                      "stain colours differ less, or leave its colours (none)", choices=STAINS)
    epochs: int = flag(50, "training epochs")
    batch_size: int = flag(64, "images per batch")
    optimizer: str = flag("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: float = flag(2e-3, "peak learning rate (warmup, then cosine decay)")
    weight_decay: float = flag(0.05, "weight decay of weights (not of biases and norms)")
    warmup_epochs: float = flag(2.0, "linear learning-rate warmup, in epochs")
    label_smoothing: float = flag(0.1, "label smoothing of the cross-entropy")
    balance: str = flag("sampler", "minority classes: balanced batches (sampler), a class-weighted loss, or nothing",
                        choices=("sampler", "weighted_loss", "none"))
    ema_decay: float = flag(0.998, "exponential moving average of the weights (0: off)")
    patience: int = flag(15, "early stopping on validation macro-F1 after this many epochs without gain (0: off)")
    merge_near_duplicates: bool = flag(True, "keep one cell photographed twice on one side of the split")
    val_frac: float = flag(0.15, "share of the data for validation (when --val is not given)")
    test_frac: float = flag(0.15, "share of the data for the test split (when --test is not given)")
    seed: int = flag(0, "seed of the split, initialisation, sampling and augmentation")
    device: str = flag("cpu", "where to train: cpu, cuda, cuda:N, or auto (a GPU when there is one)")
    bf16: bool | None = flag(None, "bf16 autocast (default: on GPUs, and on CPUs that support it)")
    channels_last: bool | None = flag(None, "channels-last memory layout (default: with bf16)")
    threads: int | None = flag(None, "torch threads (default: torch's choice)")
    workers: int | None = flag(None, "image decoding threads (default: the cores, up to 8)")
    cache_dir: str | None = flag(".cache/wbcnet", "decode cache folder (none: decode into memory only)")
    augment: AugmentConfig = flag(AugmentConfig(), "augmentation strengths (YAML only)", cli=False)
    progress: bool = flag(True, "progress bars")

    def validate(self) -> "TrainConfig":
        """Raise WbcnetError naming the first bad value and what is allowed; returns self."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise WbcnetError(f"{f.name}: {value!r} is not one of {', '.join(choices)}")
        positive = ("epochs", "batch_size", "lr")
        for name in positive:
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise WbcnetError(f"{name}: must be a number above 0, not {getattr(self, name)!r}")
        for name in ("img_size", "threads", "workers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise WbcnetError(f"{name}: must be a whole number of at least 1, not {value!r}")
        if self.img_size is not None and self.img_size < 16:
            raise WbcnetError(f"img_size: {self.img_size} px is too small (at least 16)")
        for name in ("weight_decay", "warmup_epochs", "patience"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise WbcnetError(f"{name}: must be a number of at least 0, not {getattr(self, name)!r}")
        if not (_is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise WbcnetError(f"label_smoothing: must be in [0, 1), not {self.label_smoothing!r}")
        if not (_is_number(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise WbcnetError(f"ema_decay: must be in [0, 1) (0 turns EMA off), not {self.ema_decay!r}")
        for name in ("val_frac", "test_frac"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 <= value < 0.5):
                raise WbcnetError(f"{name}: must be in [0, 0.5), not {value!r}")
        if self.val_frac + self.test_frac >= 0.6:
            raise WbcnetError(f"val_frac + test_frac = {self.val_frac + self.test_frac:g} leaves too little to train "
                              f"on (keep it below 0.6)")
        if not (self.group_by in ("auto", "name", "column", "none") or str(self.group_by).startswith("regex:")):
            raise WbcnetError(f"group_by: {self.group_by!r} is not one of auto, name, column, none, regex:PATTERN")
        if self.data is not None:
            from ..data.sources import parse_sources

            parse_sources(self.data)  # names and duplicates checked here, paths when scanned
        if not (self.device in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", str(self.device))):
            raise WbcnetError(f"device: {self.device!r} is not one of cpu, cuda, cuda:N, auto")
        if not (_is_number(self.crop_context) and 1.0 <= self.crop_context <= 5.0):
            raise WbcnetError(f"crop_context: must be between 1 and 5 cell diameters, not {self.crop_context!r}")
        if not (_is_number(self.distill_weight) and 0 <= self.distill_weight <= 1):
            raise WbcnetError(f"distill_weight: must be in [0, 1], not {self.distill_weight!r}")
        if not (_is_number(self.distill_temperature) and self.distill_temperature > 0):
            raise WbcnetError(f"distill_temperature: must be a number above 0, not {self.distill_temperature!r}")
        if not isinstance(self.model_args, dict):
            raise WbcnetError(f"model_args: must be a mapping of argument names to values, not {self.model_args!r}")
        return self

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        if not isinstance(d, dict):
            raise WbcnetError(f"{where}: expected a mapping of settings, not {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise WbcnetError(f"{where}: unknown config keys: {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(known))})")
        d = dict(d)
        if d.get("augment") is not None:
            if not isinstance(d["augment"], dict):
                raise WbcnetError(f"{where}: augment must be a mapping of strengths")
            aug_known = {f.name for f in fields(AugmentConfig)}
            bad = set(d["augment"]) - aug_known
            if bad:
                raise WbcnetError(f"{where}: unknown augment keys: {', '.join(sorted(bad))} "
                                  f"(known: {', '.join(sorted(aug_known))})")
            d["augment"] = AugmentConfig(**d["augment"])
        else:
            d.pop("augment", None)
        return cls(**d).validate()

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        try:
            with open(path) as fh:
                d = yaml.safe_load(fh)
        except FileNotFoundError:
            raise WbcnetError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise WbcnetError(f"{path}: not valid YAML{at} ({getattr(e, 'problem', None) or e})") from None
        return cls.from_dict(d or {}, str(path))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self, path) -> None:
        from ..core.files import write_text_atomic

        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def copy(self) -> "TrainConfig":
        return copy.deepcopy(self)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def add_train_flags(p) -> None:
    """One flag per TrainConfig field that offers one; a flag not given stays None (the YAML's value,
    or the field's default, holds)."""
    add_flags(p, TrainConfig, given_only=True, say_default=" (default: {default})")


def given_flags(args) -> dict:
    """The TrainConfig fields that flags set (`--no-cache`: cache_dir None)."""
    given = given_values(TrainConfig, args)
    if getattr(args, "no_cache", False) or str(given.get("cache_dir", "")).lower() == "none":
        given["cache_dir"] = None
    return given


def ignored_on_resume(args) -> list[str]:
    """The flags (and --config) that `wbcnet train --resume` ignores: a run continues with its own config."""
    return [flag_name(TrainConfig, k) for k in given_flags(args)] + (["--config"] if args.config else [])


def config_from_args(args) -> TrainConfig:
    """`--config` YAML (if any) with the flags given on top, checked."""
    from ..data.sources import parse_sources

    cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    for name, value in given_flags(args).items():
        setattr(cfg, name, value)
    if isinstance(cfg.data, list):  # from --data flags: a plain path, or {name: path} for several labs
        named = [d for d in cfg.data if "=" in d]
        cfg.data = cfg.data[0] if len(cfg.data) == 1 and not named else \
            {s.name: s.path for s in parse_sources(cfg.data)}
    return cfg.validate()


__all__ = ["TrainConfig", "AugmentConfig", "add_train_flags", "given_flags", "ignored_on_resume", "config_from_args"]
