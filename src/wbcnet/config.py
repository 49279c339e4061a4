"""One config object per training run, saved beside its results as YAML."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .data.augment import AugmentConfig


@dataclass
class TrainConfig:
    data: str | None = None            # ImageFolder or CSV manifest
    val_data: str | None = None        # separate validation set (else split from `data`)
    test_data: str | None = None       # separate test set (else split from `data`)
    classes: list[str] | None = None   # default: the class folders found, sorted
    out: str | None = None             # run folder; default runs/<model>-<timestamp>
    model: str = "mhcnn"
    model_args: dict = field(default_factory=dict)
    pretrained: str | None = None      # local weights file to start from
    img_size: int | None = None        # default: the model's own
    epochs: int = 50
    batch_size: int = 64
    optimizer: str = "adamw"           # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    balance: str = "sampler"           # sampler (balanced batches) | weighted_loss | none
    ema_decay: float = 0.998           # 0 turns EMA off
    patience: int = 15                 # early stopping on validation macro-F1; 0 turns it off
    merge_near_duplicates: bool = True  # one cell photographed twice stays on one side of the split
    val_frac: float = 0.15
    test_frac: float = 0.15
    seed: int = 0
    bf16: bool | None = None           # None: use where the CPU supports it
    channels_last: bool | None = None  # None: with bf16
    threads: int | None = None
    workers: int | None = None         # decode threads
    cache_dir: str | None = ".cache/wbcnet"  # None: decode into memory only
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        d = dict(d)
        if isinstance(d.get("augment"), dict):
            aug_known = {f.name for f in fields(AugmentConfig)}
            bad = set(d["augment"]) - aug_known
            if bad:
                raise ValueError(f"unknown augment keys: {', '.join(sorted(bad))}")
            d["augment"] = AugmentConfig(**d["augment"])
        return cls(**d)

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        with open(path) as fh:
            return cls.from_dict(yaml.safe_load(fh) or {})

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self, path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
