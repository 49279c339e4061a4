"""The zoo: the trained models that come inside the package, picked by name.

    fast       112 px: for counting a day's slides on a laptop (the default)
    accurate   160 px: for when a result matters more than a minute

Each is a checkpoint in `assets/` (NAME.safetensors + NAME.json), shipped by
`scripts/ship_model.py RUN --name NAME`, which also writes what it measured into the JSON's `card`
(in-lab figures with their intervals, speed on the machine that shipped it); `wbcnet models` and
the web page show it. Every command that runs a model takes `--model NAME` or a path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.files import ASSETS

DEFAULT = "fast"


@dataclass(frozen=True)
class ZooModel:
    name: str
    purpose: str

    @property
    def path(self) -> Path:
        """Its weights file (it may be missing from a trimmed install)."""
        return ASSETS / f"{self.name}.safetensors"

    @property
    def installed(self) -> bool:
        return self.path.is_file() and self.path.with_suffix(".json").is_file()


ZOO = {m.name: m for m in (
    ZooModel("fast", "counting a day's slides on a laptop"),
    ZooModel("accurate", "when a result matters more than a minute: larger input, slower"),
)}


def zoo_name(path) -> str | None:
    """The zoo name of a checkpoint path (None for any other file)."""
    if path is None:
        return None
    path = Path(path)
    for m in ZOO.values():
        if path.with_suffix(".safetensors").resolve() == m.path.resolve():
            return m.name
    return None


def model_label(path) -> str:
    """How a model is named to the user: its zoo name, else its run folder's name (for a run's
    best/last checkpoint) or its file's stem; "" for none."""
    if path is None:
        return ""
    name = zoo_name(path)
    if name:
        return name
    path = Path(path)
    return path.parent.name if path.stem in ("best", "last") and path.parent.name else path.stem


__all__ = ["DEFAULT", "ZOO", "ZooModel", "model_label", "zoo_name"]
