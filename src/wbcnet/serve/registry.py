"""The models a server answers with: the one it started with, the package's zoo, and those
adapted in it.

    the server's own             the model `wbcnet serve --model` loaded: named by its zoo name
                                 (`fast`, `accurate`), else by its run folder or file
    the zoo (models/zoo.py)      every zoo model this install has, by name; `?model=accurate` loads it
                                 when first asked for, as an adapted model is; a zoo model counts with
                                 the shipped finder, and no adapted model may take a zoo name
    DATA/models/NAME/            an ordinary checkpoint run folder (adapt_lab's), loadable by
                                 checkpoint.load_model, and model-info.json (a ModelRecord); a lab
                                 model (finder.adapt_finder's) also holds the lab's finder,
                                 finder.safetensors/.json, which counting with it uses
    DATA/models/.partial-JOB/    an adapt job's folder while it runs; renamed to NAME when it has
                                 finished, so a model is either whole or not listed at all

Zoo and adapted models are loaded when first asked for and a few are kept (a small LRU cache); each is
run on the server's one model thread (worker.py), never beside another forward pass.
"""
from __future__ import annotations

import json
import re
import shutil
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from ..core.files import write_text_atomic
from ..models import zoo
from ..models.checkpoint import load_model
from .datadir import ID, Conflict, NotFound, check_id

INFO = "model-info.json"
PARTIAL = ".partial-"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ModelRecord:
    name: str
    classes: list[str]
    default: bool = False            # the model the server started with
    zoo: bool = False                # one of the models the package ships (models/zoo.py)
    img_size: int | None = None      # its input, px a side (None: a record from before it was kept)
    purpose: str | None = None       # a zoo model's: what it is for
    parameters: int | None = None    # a zoo model's, from its card
    figures: list = field(default_factory=list)  # a zoo model's card: in-lab figures (set, n, accuracy, macro_f1, CIs)
    speed: dict | None = None        # a zoo model's card: img_per_s, reference_decode_per_s, cpu (the shipping machine)
    speed_here: float | None = None  # speed's img_per_s scaled by the decode yardstick measured on this server
    created: str | None = None
    parent: str | None = None        # the model it was adapted from
    lab: str | None = None
    labelled: int | None = None      # labelled cells it was adapted on
    unlabelled: int | None = None    # unlabelled pictures it was given
    budget: str | None = None
    job: str | None = None
    adapted_from: dict = field(default_factory=dict)   # the checkpoint's own record, without paths
    finder: dict | None = None       # a lab's finder beside the classifier: fields, points and steps it learnt from


@dataclass
class Loaded:
    name: str
    model: object
    meta: object


def default_name(meta) -> str:
    """A zoo model's name (`fast`, `accurate`); else the checkpoint's run folder (or file) name as
    an id, never a zoo name (another file called accurate.safetensors is not the zoo's)."""
    path = Path(meta.path) if meta.path else None
    if path is None:
        return "server"
    name = zoo.zoo_name(path)
    if name:
        return name
    stem = path.parent.name if path.stem in ("best", "last") else path.stem
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:40].strip("-")
    if name in zoo.ZOO:
        name = f"{name}-file"
    return name if ID.fullmatch(name or "") else "server"


def zoo_meta(name: str) -> dict:
    """A zoo model's checkpoint JSON (its classes, input size and card), without loading its weights."""
    return json.loads(zoo.ZOO[name].path.with_suffix(".json").read_text(encoding="utf-8"))


def card_fields(card: dict | None, yardstick=None) -> dict:
    """The ModelRecord fields a zoo model's card gives: figures, speed and parameters as
    scripts/ship_model.py wrote them, and the speed scaled to this machine where `yardstick()`
    (this machine's decode_reference, pictures/s) and the card's own yardstick are known."""
    card = card if isinstance(card, dict) else {}
    figures = [f for f in card.get("figures") or [] if isinstance(f, dict)]
    speed = card.get("speed") if isinstance(card.get("speed"), dict) else None
    here = None
    try:
        if speed and float(speed.get("img_per_s") or 0) > 0 and float(speed.get("reference_decode_per_s") or 0) > 0 \
                and yardstick is not None:
            ref = yardstick()
            if ref:
                here = round(float(speed["img_per_s"]) * ref / float(speed["reference_decode_per_s"]), 1)
    except (TypeError, ValueError):
        here = None
    parameters = card.get("parameters")
    return {"figures": figures, "speed": speed, "speed_here": here,
            "parameters": parameters if isinstance(parameters, int) else None}


def without_paths(record):
    """A checkpoint's adapted_from as a client may see it: the counts and the method, without
    where files lay on this machine (as the model card leaves out the sources' paths)."""
    if isinstance(record, dict):
        return {k: without_paths(v) for k, v in record.items() if not _is_path(v)}
    if isinstance(record, list):
        return [without_paths(v) for v in record if not _is_path(v)]
    return record


def _is_path(value) -> bool:
    return isinstance(value, str) and ("/" in value or "\\" in value)


class Models:
    def __init__(self, root: Path, model, meta, cache_size: int = 3):
        self.root = root / "models"  # made with the data folder, by the first upload
        for partial in self.root.glob(PARTIAL + "*"):  # an adapt job a restart stopped: never a model
            shutil.rmtree(partial, ignore_errors=True)
        self.default = Loaded(default_name(meta), model, meta)
        self.device = next(model.parameters()).device
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._yardstick: float | None = None

    def yardstick(self) -> float | None:
        """PIL decodes/s on this machine (inference/speed.decode_reference), measured once: what a
        zoo card's speed is scaled by to say how fast it runs here."""
        if self._yardstick is None:
            from ..inference.speed import decode_reference

            try:
                self._yardstick = decode_reference(n=100)
            except Exception:  # no sample picture in a trimmed install: no estimate, never a failed list
                self._yardstick = 0.0
        return self._yardstick or None

    def zoo_names(self) -> list[str]:
        """The installed zoo models besides the server's own, in the zoo's order."""
        return [n for n, m in zoo.ZOO.items() if n != self.default.name and m.installed]

    def records(self) -> list[ModelRecord]:
        """The server's own model, the other installed zoo models, then the adapted ones, oldest first."""
        meta = self.default.meta
        own_zoo = self.default.name in zoo.ZOO
        first = ModelRecord(self.default.name, list(meta.classes), default=True, zoo=own_zoo, img_size=meta.img_size,
                            purpose=zoo.ZOO[self.default.name].purpose if own_zoo else None,
                            adapted_from=without_paths(meta.adapted_from or {}),
                            **card_fields(meta.card if own_zoo else None, self.yardstick))
        shipped = [r for r in map(self._zoo_record, self.zoo_names()) if r is not None]
        adapted = [r for r in map(self._record, self.root.glob(f"*/{INFO}")) if r is not None]
        return [first, *shipped, *sorted(adapted, key=lambda r: (r.created or "", r.name))]

    def _zoo_record(self, name: str) -> ModelRecord | None:
        try:
            d = zoo_meta(name)
            return ModelRecord(name, list(d["classes"]), zoo=True, img_size=int(d["img_size"]),
                               purpose=zoo.ZOO[name].purpose, **card_fields(d.get("card"), self.yardstick))
        except (OSError, ValueError, TypeError, KeyError):  # removed or half-written meanwhile: not listed
            return None

    def record(self, name: str) -> ModelRecord | None:
        return next((r for r in self.records() if r.name == name), None)

    def _record(self, info: Path) -> ModelRecord | None:
        """A model's record; None for a folder that is not one of ours, or a record edited past reading."""
        name = info.parent.name
        if not ID.fullmatch(name) or name == self.default.name or name in zoo.ZOO:
            return None
        try:
            d = json.loads(info.read_text(encoding="utf-8"))
            return ModelRecord(**{k: v for k, v in d.items() if k in {f.name for f in fields(ModelRecord)}})
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def folder(self, name: str) -> Path:
        """The run folder of an adapted model (404 if there is none)."""
        if not ID.fullmatch(name or "") or name == self.default.name or name in zoo.ZOO \
                or not (self.root / name / INFO).is_file():
            raise NotFound(f"no model {name!r} on this server (GET /v1/models lists them)")
        return self.root / name

    def zoo_path(self, name: str) -> Path | None:
        """A zoo model's checkpoint, for a zoo name other than the server's own (404 when this install
        lacks it); None for any other name."""
        if name not in zoo.ZOO or name == self.default.name:
            return None
        if not zoo.ZOO[name].installed:
            raise NotFound(f"no model {name!r} on this server: this install has no {name} model yet "
                           f"(GET /v1/models lists those it has)")
        return zoo.ZOO[name].path

    def checkpoint(self, name: str | None) -> Path | None:
        """What adapt_lab and suggest take as their parent: a checkpoint path (the server's own
        model's, a zoo model's, or an adapted model's folder); 404 for an unknown name."""
        if name is None or name == self.default.name:
            return self.default.meta.path
        return self.zoo_path(name) or self.folder(name)

    def finder(self, name: str | None) -> Path | None:
        """The finder a model counts with, as a path without suffix: its lab's (finder.json beside
        its checkpoint, count.lab_finder's rule), or None for the shipped finder (every zoo model's)."""
        if name is None or name == self.default.name:
            from ..inference.count import lab_finder

            found = lab_finder(self.default.meta)
            return Path(found) if found else None
        if self.zoo_path(name) is not None:
            return None
        stem = self.folder(name) / "finder"
        return stem if stem.with_suffix(".json").is_file() and stem.with_suffix(".safetensors").is_file() else None

    def check_new_name(self, name: str, pending: set[str]) -> str:
        check_id(name, "model name")
        if name in zoo.ZOO:  # installed or not: a zoo model installed later must not be shadowed
            raise Conflict(f"{name!r} is the name of one of wbcnet's own models ({', '.join(zoo.ZOO)}); "
                           f"choose another name")
        if name == self.default.name or (self.root / name).exists() or name in pending:
            raise Conflict(f"a model named {name!r} exists or is being made; choose another name")
        return name

    def get(self, name: str | None) -> Loaded:
        """The model called `name` (None: the server's own), loaded on first use. Blocking: call it
        from a thread, not the event loop."""
        if name is None or name == self.default.name:
            return self.default
        source = self.zoo_path(name) or self.folder(name)
        with self._lock:  # one load at a time: two requests for a new model load it once
            if name in self._cache:
                self._cache.move_to_end(name)
                return self._cache[name]
            model, meta = load_model(source)
            loaded = Loaded(name, model.to(self.device), meta)
            self._cache[name] = loaded
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)  # a request still holding it keeps it alive until it ends
            return loaded

    def partial(self, job_id: str) -> Path:
        return self.root / f"{PARTIAL}{job_id}"

    def publish(self, folder: Path, record: ModelRecord) -> Path:
        """Make an adapt job's finished folder the model `record.name`, in one rename."""
        write_text_atomic(folder / INFO, json.dumps(asdict(record), indent=1))
        target = self.root / check_id(record.name, "model name")
        if target.exists():
            raise Conflict(f"a model named {record.name!r} appeared while the job ran; nothing was replaced")
        folder.rename(target)
        return target
