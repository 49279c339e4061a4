"""The recipe of a `wbcnet pretrain` run (training/pretrain.py runs it): a plain dataclass whose fields
declare the command's flags (core/flags.py), so that they and their defaults are built without
importing torch (as augment_config.py is for training's augmentation)."""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields

from ..core.errors import WbcnetError
from ..core.flags import flag, given_values
from ..data.augment_config import AugmentConfig
from .config import TrainConfig

# The training augmentation made stronger (configs/multilab.yaml's, with more of each): SimCLR
# learns what a cell's two views share, so whatever differs between labs (stain, colour, optics,
# camera, framing) must differ between the views.
STRONG = AugmentConfig(rotation=45.0, shift=0.1, shear=0.15, zoom=0.2, magnify=1.5, brightness=0.3, contrast=0.3,
                       saturation=0.5, hue=0.08, channel_gain=0.1, blur=0.5, blur_sigma=2.0, downscale=3.0, jpeg=0.3,
                       hed=0.15, grayscale=0.2)
# What the backbone is for: the TrainConfig fields that decide the model and its inputs.
TARGET_FIELDS = ("model", "model_args", "img_size", "crop", "crop_context", "stain")
# How this machine runs it; nothing else may differ when a run is resumed.
RUN_ONLY = ("out", "device", "threads", "workers", "cache_dir", "progress")


@dataclass
class PretrainConfig:
    """One pretraining run: the cells, the classifier it is for, the recipe, and how it runs here."""
    out: str = flag(MISSING, "folder for backbone.safetensors, backbone.json, history.csv and loss.png", required=True)
    data: list = flag([], "an ImageFolder or CSV manifest of cells, its labels not used; repeatable", append=True,
                      metavar="NAME=PATH")
    unlabelled: list = flag([], "pictures without labels, single cells or whole fields (the finder cuts a field's "
                            "cells out); repeatable", append=True, metavar="[NAME=]PATH")
    unlabelled_kind: str = flag("auto", "what --unlabelled holds (default auto: camera-shaped or large pictures are "
                                "fields)", choices=("auto", "cells", "fields"))  # lab.KINDS
    # the classifier this backbone is for (wbcnet train's --config): its model and its inputs
    model: str = flag("mhcnn", "the model, over --config's")
    model_args: dict = field(default_factory=dict)
    img_size: int | None = flag(None, "input size in pixels, over --config's (default the model's, 112)")
    crop: str = flag("none", "over --config's: the whole picture, or the cell found in it", choices=("none", "cell"))
    crop_context: float = 1.5
    stain: str = "none"
    # the recipe. epochs: ~12 min an epoch of 21,000 cells on one busy fp32 CPU thread (resumable); lr: AdamW's
    # peak, after a linear warmup, cosine decay to 0; temperature: NT-Xent's (SimCLR: 0.1-0.5), a low one tolerates
    # same-class negatives
    epochs: int = flag(50, "passes over every cell (default {default})")
    batch_size: int = flag(128, "cells a batch, two views each: the negatives of a view are the batch's other 2B-2 "
                           "views (default {default})")
    lr: float = flag(1e-3, "AdamW peak learning rate (default {default})")
    weight_decay: float = 0.05
    warmup_epochs: float = flag(5.0, "epochs of linear learning-rate warmup before the cosine decay (default "
                                "{default})")
    temperature: float = flag(0.2, "NT-Xent temperature (default {default})")
    proj_hidden_dim: int = 512       # the projection head (thrown away): features -> hidden -> proj_dim
    proj_dim: int = 128
    seed: int = flag(0, "seed of the model, the order, the views and dropout (default {default})")
    augment: AugmentConfig = field(default_factory=lambda: STRONG)
    # how it runs here
    device: str = "cpu"
    threads: int | None = None
    workers: int | None = None
    cache_dir: str | None = flag(".cache/wbcnet", "decode cache folder for --data (default {default})")
    progress: bool = True

    def __post_init__(self):
        for name in ("epochs", "batch_size", "proj_hidden_dim", "proj_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WbcnetError(f"--{name.replace('_', '-')} {value}: must be a whole number, 1 or more")
        if self.batch_size < 2:
            raise WbcnetError("--batch-size 1: SimCLR needs at least 2 cells a batch (the others are its negatives)")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, (int, float)) \
                or not self.warmup_epochs >= 0:
            raise WbcnetError(f"--warmup-epochs {self.warmup_epochs}: must be a number, 0 or more")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise WbcnetError(f"--{name} {value}: must be a number above 0")
        if not (self.data or self.unlabelled):
            raise WbcnetError("no cells to pretrain on: give --data NAME=DIR (labels are not used) and/or "
                              "--unlabelled DIR (single cells or whole fields)")
        self.target()  # model, size and preprocessing checked before any cell is read

    def target(self) -> TrainConfig:
        """The TrainConfig whose model and inputs this backbone is for, checked, img_size filled in."""
        from ..models import default_img_size

        cfg = TrainConfig(**{k: getattr(self, k) for k in TARGET_FIELDS}, seed=self.seed).validate()
        cfg.img_size = cfg.img_size or default_img_size(cfg.model)
        return cfg

    def settings(self) -> dict:
        """Everything that makes the backbone, as JSON holds it: what a resumed run must share with the
        run it continues."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUN_ONLY}
        d["augment"] = asdict(self.augment)
        d["img_size"] = self.target().img_size
        return json.loads(json.dumps(d))  # tuples as lists, as they read back


def from_train_config(base: TrainConfig, **kw) -> PretrainConfig:
    """A pretraining run for the model and inputs of `base` (a train --config); `kw`: the rest."""
    return PretrainConfig(**{k: getattr(base, k) for k in TARGET_FIELDS}, **kw)


def config_from_args(args) -> PretrainConfig:
    """`wbcnet pretrain`'s run: the model and inputs of the train --config (if any), the flags given over
    them, and how it runs here (--device, --threads, --workers, --no-progress, --no-cache)."""
    base = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    given = given_values(PretrainConfig, args)
    if args.no_cache:
        given["cache_dir"] = None
    here = dict(device=args.device, threads=args.threads, workers=args.workers, progress=not args.no_progress)
    return PretrainConfig(**{**{k: getattr(base, k) for k in TARGET_FIELDS}, **here, **given})


__all__ = ["PretrainConfig", "STRONG", "TARGET_FIELDS", "RUN_ONLY", "from_train_config", "config_from_args"]
