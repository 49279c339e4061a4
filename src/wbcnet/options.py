"""What a command was asked to do, checked in one place before any work starts.

- `InferenceOptions`: the options of every command that runs a model (checkpoint, device,
  threads, batch size, workers, min_confidence, shift check, TTA), checked once; `load_model()`
  applies the threads and device and loads the checkpoint.
- `shared_flags()`: the argparse parent that defines those flags (and --overwrite), each once, for
  every command that takes them.
- The checks on the rest of a command's input: input paths, --shots, tune's and count's numbers,
  serve's limits.

Imports neither torch nor numpy, so that `wbcnet --help` and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import WbcnetError


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1] (a confidence), checked where it is typed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def check_device(name) -> str:
    if not (name in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", str(name))):
        raise WbcnetError(f"--device {name}: not one of cpu, cuda, cuda:N, auto")
    return name


def at_least_one(flag: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise WbcnetError(f"{flag} {value}: must be a whole number, 1 or more")


@dataclass(frozen=True)
class InferenceOptions:
    """How a command runs a model. `threads`: torch's intra-op threads, for the whole process (the
    server's model thread included); None leaves torch's choice."""
    checkpoint: str | None = None
    device: str = "cpu"
    threads: int | None = None
    batch_size: int = 64
    workers: int | None = None
    min_confidence: float = 0.0
    shift_check: bool = True
    tta: bool = False

    def __post_init__(self):
        check_device(self.device)
        at_least_one("--threads", self.threads)
        at_least_one("--batch-size", self.batch_size)
        at_least_one("--workers", self.workers)
        if isinstance(self.min_confidence, bool) or not isinstance(self.min_confidence, (int, float)) \
                or not 0 <= self.min_confidence <= 1:
            raise WbcnetError(f"--min-confidence {self.min_confidence}: must be between 0 and 1")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "InferenceOptions":
        """The options a command's flags give (shared_flags); those it lacks keep their defaults."""
        given = {f.name: getattr(args, f.name) for f in fields(cls)
                 if f.name != "shift_check" and hasattr(args, f.name)}
        if hasattr(args, "no_shift_check"):
            given["shift_check"] = not args.no_shift_check
        if given.get("device") is None:
            given.pop("device", None)
        return cls(**given)

    def apply_threads(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def load_model(self):
        """(model in eval mode on `device`, its CheckpointMeta), with `threads` set first."""
        from .checkpoint import load_model
        from .inference import resolve_device

        self.apply_threads()
        device = resolve_device(self.device)  # no GPU: said before the checkpoint is read
        model, meta = load_model(self.checkpoint)
        return model.to(device), meta


# Every flag that several commands share (most of them the model-running ones'): defined here once.
SHARED_FLAGS = {
    "debug": (["--debug"], dict(action="store_true", default=argparse.SUPPRESS,  # after the command's name too
                                help="show the full traceback of an error")),
    "no_progress": (["--no-progress"], dict(action="store_true", help="no progress bars (logs, CI)")),
    "inputs": (["inputs"], dict(nargs="+", help="image files, folders or glob patterns")),
    "out_dir": (["--out"], dict(required=True, help="output folder (refused if it holds files, unless --overwrite)")),
    "checkpoint": (["--checkpoint"], dict(help="run folder or .safetensors (default: the shipped model)")),
    "device": (["--device"], dict(default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")),
    "threads": (["--threads"], dict(type=int, help="torch threads (default: torch's choice, all cores); on a "
                                    "busy machine 1-2 answer faster")),
    "batch_size": (["--batch-size"], dict(type=int, help="images per forward pass (default %(default)s)")),
    "workers": (["--workers"], dict(type=int, help="image-reading threads (default: all cores)")),
    "min_confidence": (["--min-confidence"], dict(type=probability, default=0.0, help="below this a cell is 'refer' "
                                                  "(to a human) and left out of counts")),
    "shift_check": (["--no-shift-check"], dict(action="store_true", help="don't flag (and refer) cells unlike "
                                               "the training labs' cells")),
    "tta": (["--tta"], dict(action="store_true", help="test-time augmentation: average each cell's 8 turns and "
                            "mirror images (8x slower)")),
    "overwrite": (["--overwrite"], dict(action="store_true", help="empty --out first if it holds files")),
}


def shared_flags(*names: str, batch_size: int = 64) -> argparse.ArgumentParser:
    """An argparse parent with the SHARED_FLAGS `names` (`batch_size`: --batch-size's default)."""
    parent = argparse.ArgumentParser(add_help=False)
    for name in names:
        flags, kw = SHARED_FLAGS[name]
        parent.add_argument(*flags, **({**kw, "default": batch_size} if name == "batch_size" else kw))
    return parent


# --- the rest of a command's input -------------------------------------------------------------------

def input_paths(inputs: list[str], what: str) -> list[str]:
    """The image files that files, folders and globs name; what was skipped is said on stderr."""
    from .predict import expand_inputs

    paths, skipped = expand_inputs(inputs)
    if not paths:
        why = f" ({skipped[0][0]}: {skipped[0][1]})" if len(skipped) == 1 else ""
        raise WbcnetError(f"no {what} in {' '.join(inputs)}{why}")
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return paths


def parse_shots(text: str, repeats: int) -> list[int]:
    """adapt --shots 5,10,25 -> [5, 10, 25]."""
    from .adapt import MIN_CELLS_PER_CLASS

    try:
        shots = sorted({int(k) for k in text.split(",")})
    except ValueError:
        raise WbcnetError(f"--shots {text}: give whole numbers of cells per class, e.g. 5,10,25") from None
    if repeats < 1:
        raise WbcnetError(f"--repeats {repeats}: must be at least 1")
    if min(shots) < MIN_CELLS_PER_CLASS:
        raise WbcnetError(f"--shots {text}: adapt needs at least {MIN_CELLS_PER_CLASS} cells of each class")
    return shots


def check_count(target: int | None, truth: str | None) -> None:
    if target is not None and target < 1:
        raise WbcnetError(f"--target {target}: must be a number of cells, 1 or more")
    if truth and not Path(truth).is_file():
        raise WbcnetError(f"--truth {truth}: no such file")


def check_tune(trials: int, epochs: int, timeout: float | None) -> None:
    from importlib.util import find_spec

    if not find_spec("optuna"):
        raise WbcnetError("wbcnet tune needs Optuna: pip install -e '.[tune]' (or pip install optuna)")
    if trials < 1:
        raise WbcnetError(f"--trials {trials}: must be 1 or more")
    if epochs < 1:
        raise WbcnetError(f"--epochs {epochs}: must be 1 or more")
    if timeout is not None and timeout <= 0:
        raise WbcnetError(f"--timeout {timeout}: must be a number of seconds above 0")


def check_serve(max_upload_mb: float, max_files: int) -> None:
    from importlib.util import find_spec

    if not (find_spec("fastapi") and find_spec("uvicorn") and (find_spec("python_multipart") or find_spec("multipart"))):
        raise WbcnetError("wbcnet serve needs FastAPI, uvicorn and python-multipart, which wbcnet installs: "
                          "pip install -e .")
    if max_upload_mb <= 0 or max_files < 1:
        raise WbcnetError("--max-upload-mb and --max-files must be above 0")


def metrics_json_of(source) -> Path:
    """plot-confusion's source: a metrics.json, or the evaluation or run folder that holds one."""
    src = Path(source)
    found = src if src.suffix == ".json" else next(
        (p for p in (src / "metrics.json", src / "test" / "metrics.json") if p.exists()), None)
    if found is None or not found.exists():
        raise WbcnetError(f"{src}: no metrics.json here (give a metrics.json, an evaluation or a run folder)")
    return found
