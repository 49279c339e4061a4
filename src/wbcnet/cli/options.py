"""What a command was asked to do, checked in one place before any work starts.

- `InferenceOptions`: the options of every command that runs a model (checkpoint, device,
  threads, batch size, workers, min_confidence, shift check, TTA), checked once; `load_model()`
  applies the threads and device and loads the checkpoint.
- `shared_flags()`: the argparse parent that defines those flags (and --overwrite), each once, for
  every command that takes them.
- `EvaluateOptions`, `PredictOptions`, `CountOptions`, `AdaptOptions`, `TuneOptions`,
  `PretrainOptions`, `ServeOptions`, ...: each command's own options, checked when made; their
  fields declare their flags (core/flags.py's `flag`, as TrainConfig's and PretrainConfig's do),
  `add_flags()` builds them and `from_args()` makes the options from the parsed arguments.
- The checks on the rest of a command's input: input paths, count's numbers.

Imports neither torch nor numpy, so that `wbcnet --help` and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from ..core.errors import WbcnetError, needs
from ..core.flags import add_flags, flag, from_args  # noqa: F401 (from_args: main.py's, with the classes)


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
        from ..inference.runner import resolve_device
        from ..models.checkpoint import load_model

        self.apply_threads()
        device = resolve_device(self.device)  # no GPU: said before the checkpoint is read
        model, meta = load_model(self.checkpoint)
        print(f"model: {describe(meta)}", file=sys.stderr)  # every result names the model it came from
        return model.to(device), meta


def describe(meta) -> str:
    """One line naming a loaded model: `fast (mhcnn, 112 px)`, or a run's name and its file."""
    from ..models.zoo import model_label, zoo_name

    what = f"{meta.model}, {meta.img_size} px"
    return f"{model_label(meta.path)} ({what})" if zoo_name(meta.path) else f"{model_label(meta.path)} ({what}; {meta.path})"


# Every flag that several commands share (most of them the model-running ones'): defined here once.
SHARED_FLAGS = {
    "debug": (["--debug"], dict(action="store_true", default=argparse.SUPPRESS,  # after the command's name too
                                help="show the full traceback of an error")),
    "no_progress": (["--no-progress"], dict(action="store_true", help="no progress bars (logs, CI)")),
    "inputs": (["inputs"], dict(nargs="+", help="image files, folders or glob patterns")),
    "out_dir": (["--out"], dict(required=True, help="output folder (refused if it holds files, unless --overwrite)")),
    "checkpoint": (["--model", "--checkpoint"], dict(dest="checkpoint", metavar="MODEL", help="fast or accurate "
                   "(the models wbcnet comes with: `wbcnet models`), or a run folder or .safetensors (default: fast)")),
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
    "overwrite": (["--overwrite"], dict(action="store_true", help="replace what --out holds (kept as it was until "
                                        "the new output is finished: Ctrl-C or an error leaves it)")),
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
    from ..inference.predict import expand_inputs

    paths, skipped = expand_inputs(inputs)
    if not paths:
        why = f" ({skipped[0][0]}: {skipped[0][1]})" if len(skipped) == 1 else ""
        raise WbcnetError(f"no {what} in {' '.join(inputs)}{why}")
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return paths


def check_count(target: int | None, truth: str | None) -> None:
    if target is not None and target < 1:
        raise WbcnetError(f"--target {target}: must be a number of cells, 1 or more")
    if truth and not Path(truth).is_file():
        raise WbcnetError(f"--truth {truth}: no such file")


@dataclass(frozen=True)
class TrainOptions:  # the rest of train's flags are TrainConfig's (config.add_train_flags)
    config: str | None = flag(help="YAML config (flags given override it)")
    resume: str | None = flag(help="continue an interrupted run from its last checkpoint (with its own config; other "
                              "flags are ignored)", metavar="RUN_DIR")
    no_cache: bool = flag(False, help="decode into memory only (same as --cache-dir none)")


@dataclass(frozen=True)
class PlotOptions:
    source: str = flag(help="metrics.json, an evaluation folder or a run folder", positional=True)
    out: str | None = flag(help="PNG path (default: confusion_matrix.png beside metrics.json)")

    def read(self) -> tuple[dict, Path]:
        """(the metrics.json that `source` names or holds, the PNG to draw it into)."""
        import json

        found = metrics_json_of(self.source)
        return json.loads(found.read_text()), Path(self.out) if self.out else found.parent / "confusion_matrix.png"


@dataclass(frozen=True)
class EvaluateOptions:
    data: list[str] = flag(help="ImageFolder or CSV manifest; classes matched by name. Repeat as NAME=PATH for several "
                           "sets (one folder each, plus summary.csv/.md and a summary report.html); with a multi-lab "
                           "run's split.csv, NAME=split.csv keeps that lab's rows", required=True, append=True,
                           metavar="[NAME=]PATH")
    split: str | None = flag(help="with --data RUN/split.csv: evaluate only that split of the run",
                             choices=["train", "val", "test"])
    run: str | None = flag(help="run folder whose training curves to draw")
    no_explain: bool = flag(False, help="skip the Grad-CAM/attention grids")
    home: str | None = flag(help="with several sets: the comma-separated sets of the training labs' own cells, against "
                            "which the shift score's AUROC is measured (default: sets named after a training lab, or "
                            "LAB_test)")
    bootstrap: int = flag(1000, metavar="N",
                          help="bootstrap resamples for the 95%% confidence intervals (default 1000; 0: none)")


@dataclass(frozen=True)
class PredictOptions:
    out: str = flag("-", help="CSV path (default: standard output); an existing file is replaced only once every row "
                    "is written")
    backend: str = flag("torch", choices=["torch", "onnxruntime"])
    onnx: str | None = flag(help="ONNX file for --backend onnxruntime (default: beside the checkpoint)")


@dataclass(frozen=True)
class CountOptions:
    target: int | None = flag(metavar="N", help="the number of cells the differential needs (e.g. 100 or "
                              "200): say whether it was reached")
    truth: str | None = flag(metavar="CSV", help="hand-drawn boxes, file,x0,y0,x1,y1[,label]: score the count against "
                             "them (detection recall/precision, type accuracy, differential error)")
    no_fields: bool = flag(False, help="don't draw every field into fields/")
    finder: str | None = flag(choices=["learned", "classic"], help="find (and crop) the cells with the learned "
                              "finder or the thresholds of wbcnet before it (default: the checkpoint's, learned)")

    def __post_init__(self):
        check_count(self.target, self.truth)


@dataclass(frozen=True)
class ExportOptions:
    format: str = flag("onnx", choices=["onnx"])
    out: str | None = flag(help="ONNX path (default: beside the checkpoint, same name, .onnx)")
    opset: int = flag(17)


@dataclass(frozen=True)
class AuditOptions:
    data: str = flag(help="ImageFolder or CSV manifest", positional=True)
    against: str | None = flag(help="a second set: report the duplicates shared between the two")
    out: str | None = flag(help="folder for audit.json and audit.html (default wbcnet-audit-<time>)")


@dataclass(frozen=True)
class DemoOptions:
    out: str | None = flag(help="new folder for the results (default wbcnet-demo-<time>)")
    epochs: int = flag(30)
    seed: int = flag(0)


@dataclass(frozen=True)
class AdaptOptions:
    data: str | None = flag(help="your labelled cells (ImageFolder, CSV manifest, or the suggest.csv you filled in), "
                            "e.g. 5-50 per class")
    unlabelled: str | None = flag(help="your lab's pictures without labels: single cells, or whole fields whose cells "
                                  "the finder cuts out; used with --data (alone they made the model worse and are refused, "
                                  "but for --suggest and --adabn)", metavar="DIR")
    unlabelled_kind: str = flag("auto", choices=["auto", "cells", "fields"],
                                help="what --unlabelled holds (default auto: camera-shaped or large pictures are "
                                "fields, square ones cells)")
    suggest: int | None = flag(metavar="N", help="write the N cells of --unlabelled worth labelling to --out "
                               "(suggest.csv and cells/): fill in its label column, then adapt --data suggest.csv")
    out: str = flag(help="new run folder (with --shots: a folder for the learning curve, emptied first with "
                    "--overwrite; with --suggest: the folder for the cells to label)", required=True)
    epochs: int = flag(12, help="epochs on the labelled cells (default 12)")
    steps: int = flag(500, help="self-training steps with --unlabelled (default 500; ~4 min on 2 cores)")
    lr: float = flag(3e-4)
    seed: int = flag(0)
    shots: str | None = flag(help="comma-separated cells per class, e.g. 5,10,25,50: adapt on that many cells of half "
                             "of --data's fields, score on the other half, and draw the learning curve")
    repeats: int = flag(5, help="draws per --shots value (default 5)")
    pick: str = flag("random", choices=["random", "any", "suggested"], help="with --shots: which cells are labelled: "
                     "k random ones of each class, k x classes at random blind to their class, or the ones --suggest "
                     "would show (default random)")
    shots_unlabelled: bool = flag(False, help="with --shots: every cell of the adapting half also unlabelled; k=0 is "
                                  "then adaptation without labels")
    adabn: bool = flag(False, help="with --unlabelled alone: only re-estimate a BatchNorm model's statistics (AdaBN)")

    def __post_init__(self):
        if self.suggest is not None and not self.unlabelled:
            raise WbcnetError("--suggest picks from your unlabelled pictures: give --unlabelled DIR")
        if not (self.data or self.unlabelled):
            raise WbcnetError("give --data (labelled cells of your lab), --unlabelled (its pictures), or both")
        at_least_one("--epochs", self.epochs)
        at_least_one("--steps", self.steps)
        at_least_one("--repeats", self.repeats)
        at_least_one("--suggest", self.suggest)
        if self.shots is not None:
            if not self.data:
                raise WbcnetError("--shots draws labelled cells from --data: give it")
            self.shot_counts()

    def shot_counts(self) -> list[int]:
        """--shots 5,10,25 -> [5, 10, 25]."""
        from ..lab.adapt import MIN_CELLS_PER_CLASS

        try:
            shots = sorted({int(k) for k in self.shots.split(",")})
        except ValueError:
            raise WbcnetError(f"--shots {self.shots}: give whole numbers of cells per class, e.g. 5,10,25") from None
        if min(shots) < MIN_CELLS_PER_CLASS:
            raise WbcnetError(f"--shots {self.shots}: adapt needs at least {MIN_CELLS_PER_CLASS} cells of each class")
        return shots


@dataclass(frozen=True)
class TuneOptions:
    config: str = flag(help="base training config (YAML), e.g. configs/multilab.yaml", required=True)
    trials: int = flag(help="finished trials the study should hold (a resumed study counts the ones it has)",
                       required=True)
    storage: str = flag("sqlite:///tune.db", help="Optuna storage URL: sqlite:///FILE for one machine, "
                        "postgresql://USER:PASS@HOST/DB for several (default sqlite:///tune.db)")
    study: str = flag("wbcnet", help="study name in the storage (default wbcnet)")
    space: str | None = flag(help="search space YAML (default: the package's assets/tune_space.yaml)")
    epochs: int = flag(6, help="epochs per trial (default 6)")
    timeout: float | None = flag(metavar="S", help="stop starting trials after S seconds")
    pruner: str = flag("median", choices=["median", "hyperband", "none"])
    seed: int = flag(0, help="the sampler's seed; give each process of a shared study its own")
    out: str | None = flag(help="folder for best.yaml, trials.csv, tune.html and the trials' runs (default tune-STUDY)")

    def __post_init__(self):
        needs("tune", "optuna", install="Optuna: pip install -e '.[tune]' (or pip install optuna)")
        if self.trials < 1:
            raise WbcnetError(f"--trials {self.trials}: must be 1 or more")
        if self.epochs < 1:
            raise WbcnetError(f"--epochs {self.epochs}: must be 1 or more")
        if self.timeout is not None and self.timeout <= 0:
            raise WbcnetError(f"--timeout {self.timeout}: must be a number of seconds above 0")


@dataclass(frozen=True)
class PretrainOptions:  # pretrain's flags that are not PretrainConfig's (training/pretrain_config.py declares those)
    config: str | None = flag(help="the wbcnet train config the backbone is for: its model, model_args, img_size, crop "
                              "and stain (default: train's defaults)", metavar="YAML")
    resume: bool = flag(False, help="continue the interrupted run in --out (the same command, plus --resume)")
    no_cache: bool = flag(False, help="decode into memory only")

    def __post_init__(self):
        needs("pretrain", "lightly", install="lightly: pip install -e '.[pretrain]' (or pip install lightly)")


def add_pretrain_flags(parser) -> None:
    """pretrain's flags: PretrainConfig's (a flag not given leaves the recipe's value, or --config's) and
    PretrainOptions', in the order `wbcnet pretrain --help` has always listed them."""
    from ..training.pretrain_config import PretrainConfig

    add_flags(parser, PretrainConfig, PretrainOptions, given_only=True, names=(
        "data", "unlabelled", "unlabelled_kind", "config", "out", "resume", "model", "img_size", "crop", "epochs",
        "batch_size", "lr", "temperature", "warmup_epochs", "seed", "cache_dir", "no_cache"))


@dataclass(frozen=True)
class ServeOptions:
    host: str = flag("127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    port: int = flag(8000, help="port (default 8000)")
    allow_remote: bool = flag(False, help="allow a --host other than a loopback address, so that other machines can "
                              "reach the server; its API then needs a token (made and printed at start, or "
                              "--token) or a user's password (--users)")
    token: str | None = flag(help="the token API requests must send (Authorization: Bearer TOKEN), 16 characters or "
                             "more; default $WBCNET_TOKEN (which other users can't read in the process list), else "
                             "one made at start when the server is reachable from other machines", metavar="TOKEN")
    users: str | None = flag(help="a password file, user:HASH lines (from --hash-password): each user may sign in "
                             "with their password", metavar="FILE")
    hash_password: str | None = flag(help="print a --users line for USER, with the password asked for (or read from "
                                     "standard input), and exit", metavar="USER")
    max_upload_mb: float = flag(20.0, help="largest request body, MB (default 20; larger gets 413)")
    max_files: int = flag(64, help="most files per request (default 64)")
    data_dir: str | None = flag(help="folder for what the page's \"Teach it your lab\" keeps: uploads, labels, "
                                "adapted models, jobs; made on start (default ./wbcnet-data, made only when "
                                "something is first stored)", metavar="DIR")

    def __post_init__(self):
        needs("serve", "fastapi", "uvicorn", "python_multipart|multipart",
              install="FastAPI, uvicorn and python-multipart, which wbcnet installs: pip install -e .")
        if self.max_upload_mb <= 0 or self.max_files < 1:
            raise WbcnetError("--max-upload-mb and --max-files must be above 0")


def metrics_json_of(source) -> Path:
    """plot-confusion's source: a metrics.json, or the evaluation or run folder that holds one."""
    src = Path(source)
    found = src if src.suffix == ".json" else next(
        (p for p in (src / "metrics.json", src / "test" / "metrics.json") if p.exists()), None)
    if found is None or not found.exists():
        raise WbcnetError(f"{src}: no metrics.json here (give a metrics.json, an evaluation or a run folder)")
    return found
