"""The models a server answers with: the one it started with, and those adapted in it.

    DATA/models/NAME/            an ordinary checkpoint run folder (adapt_lab's), loadable by
                                 checkpoint.load_model, and model-info.json (a ModelRecord); a lab
                                 model (finder.adapt_finder's) also holds the lab's finder,
                                 finder.safetensors/.json, which counting with it uses
    DATA/models/.partial-JOB/    an adapt job's folder while it runs; renamed to NAME when it has
                                 finished, so a model is either whole or not listed at all

Adapted models are loaded when first asked for and a few are kept (a small LRU cache); each is
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
from ..models.checkpoint import SHIPPED, load_model
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
    """"shipped" for the package's model; else the checkpoint's run folder (or file) name as an id."""
    path = Path(meta.path) if meta.path else None
    if path is None or path == SHIPPED.with_suffix(".safetensors"):
        return "shipped"
    stem = path.parent.name if path.stem in ("best", "last") else path.stem
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:40].strip("-")
    return name if ID.fullmatch(name or "") else "server"


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

    def records(self) -> list[ModelRecord]:
        meta = self.default.meta
        first = ModelRecord(self.default.name, list(meta.classes), default=True,
                            adapted_from=without_paths(meta.adapted_from or {}))
        adapted = [r for r in map(self._record, self.root.glob(f"*/{INFO}")) if r is not None]
        return [first, *sorted(adapted, key=lambda r: (r.created or "", r.name))]

    def record(self, name: str) -> ModelRecord | None:
        return next((r for r in self.records() if r.name == name), None)

    def _record(self, info: Path) -> ModelRecord | None:
        """A model's record; None for a folder that is not one of ours, or a record edited past reading."""
        name = info.parent.name
        if not ID.fullmatch(name) or name == self.default.name:
            return None
        try:
            d = json.loads(info.read_text(encoding="utf-8"))
            return ModelRecord(**{k: v for k, v in d.items() if k in {f.name for f in fields(ModelRecord)}})
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def folder(self, name: str) -> Path:
        """The run folder of an adapted model (404 if there is none)."""
        if not ID.fullmatch(name or "") or name == self.default.name or not (self.root / name / INFO).is_file():
            raise NotFound(f"no model {name!r} on this server (GET /v1/models lists them)")
        return self.root / name

    def checkpoint(self, name: str | None) -> Path | None:
        """What adapt_lab takes as its parent: a checkpoint path (None: the shipped model)."""
        if name is None or name == self.default.name:
            return self.default.meta.path
        return self.folder(name)

    def finder(self, name: str | None) -> Path | None:
        """The finder a model counts with, as a path without suffix: its lab's (finder.json beside
        its checkpoint, count.lab_finder's rule), or None for the shipped finder."""
        if name is None or name == self.default.name:
            from ..inference.count import lab_finder

            found = lab_finder(self.default.meta)
            return Path(found) if found else None
        stem = self.folder(name) / "finder"
        return stem if stem.with_suffix(".json").is_file() and stem.with_suffix(".safetensors").is_file() else None

    def check_new_name(self, name: str, pending: set[str]) -> str:
        check_id(name, "model name")
        if name == self.default.name or (self.root / name).exists() or name in pending:
            raise Conflict(f"a model named {name!r} exists or is being made; choose another name")
        return name

    def get(self, name: str | None) -> Loaded:
        """The model called `name` (None: the server's own), loaded on first use. Blocking: call it
        from a thread, not the event loop."""
        if name is None or name == self.default.name:
            return self.default
        folder = self.folder(name)
        with self._lock:  # one load at a time: two requests for a new model load it once
            if name in self._cache:
                self._cache.move_to_end(name)
                return self._cache[name]
            model, meta = load_model(folder)
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
