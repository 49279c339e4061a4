"""`wbcnet` command line: argument parsing only, one function per subcommand.

User errors (WbcnetError) are printed as one line with exit code 2 (`--debug` shows the
traceback); anything else is a bug in wbcnet and keeps its traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path

from .errors import WbcnetError


# Flags whose name is not the field's, kept from earlier versions of the CLI.
FLAG_NAMES = {"val_data": "--val", "test_data": "--test"}


def _flag(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1] (a confidence), checked where it is typed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def add_train_flags(p) -> None:
    """One flag per TrainConfig field (config.py says which), with its type, choices and default."""
    from .config import field_default, flag_fields

    for f in flag_fields():
        default = field_default(f)
        help = f"{f.metadata['help']} (default: {'none' if default is None else default})"
        kind = str(f.type)
        if f.metadata.get("append"):
            p.add_argument(_flag(f.name), dest=f.name, action="append", default=None, metavar="[NAME=]PATH", help=help)
        elif kind.startswith("bool"):
            p.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif kind.startswith("list"):
            p.add_argument(_flag(f.name), dest=f.name, type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
                           default=None, help=help)
        else:
            convert = int if kind.startswith("int") else float if kind.startswith("float") else str
            p.add_argument(_flag(f.name), dest=f.name, type=convert, choices=f.metadata.get("choices"), default=None,
                           help=help)


def given_train_flags(args) -> dict:
    from .config import flag_fields

    given = {f.name: getattr(args, f.name) for f in flag_fields() if getattr(args, f.name, None) is not None}
    if args.no_cache:
        given["cache_dir"] = None
    return given


def train_config(args):
    """The YAML config (if any) with the flags given on top, checked."""
    from .config import TrainConfig
    from .data.sources import parse_sources

    cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    for name, value in given_train_flags(args).items():
        setattr(cfg, name, value)
    if isinstance(cfg.data, list):  # from --data flags: a plain path, or {name: path} for several labs
        named = [d for d in cfg.data if "=" in d]
        cfg.data = cfg.data[0] if len(cfg.data) == 1 and not named else \
            {s.name: s.path for s in parse_sources(cfg.data)}
    return cfg.validate()


def cmd_train(args) -> int:
    from .train import fit

    if args.resume:
        ignored = [_flag(k) for k in given_train_flags(args)] + (["--config"] if args.config else [])
        if ignored:
            print(f"note: --resume continues {args.resume} with its own config.yaml; ignoring {', '.join(ignored)}",
                  file=sys.stderr)
        run = fit(None, resume=args.resume)
    else:
        run = fit(train_config(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"done: {run}")
    return 0


def cmd_evaluate(args) -> int:
    from .checkpoint import load_model
    from .data.sources import parse_sources
    from .evaluate import evaluate_folder, evaluate_sets
    from .files import prepare_output_dir
    from .inference import resolve_device

    sets = parse_sources(args.data)
    out = prepare_output_dir(args.out, args.overwrite)
    model, meta = load_model(args.checkpoint)
    model = model.to(resolve_device(args.device))
    print(f"model: {meta.path} ({meta.model}, classes {', '.join(meta.classes)})")
    run_dir = args.run or (meta.path.parent if args.checkpoint else None)
    common = dict(batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress,
                  explain_maps=not args.no_explain, n_resamples=args.bootstrap, tta=args.tta,
                  shift_check=not args.no_shift_check)
    if len(args.data) > 1 or "=" in args.data[0]:
        home = [h.strip() for h in args.home.split(",")] if args.home else None
        rows = evaluate_sets(model, meta, [(s.name, s.path) for s in sets], out, split=args.split, home=home, **common)
        for r in rows:
            print(f"{r['set']:>12s}  n={r['n']:<6d} accuracy {r['accuracy']:.4f} ({r['accuracy_ci']})  balanced "
                  f"accuracy {r['balanced_accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f} ({r['macro_f1_ci']})")
        for r in rows:
            if r["shift_auroc"] != "":
                print(f"{r['set']:>12s}  shift score AUROC against the home sets: {r['shift_auroc']:.4f}")
        print(f"-> {out / 'summary.md'}, {out / 'report.html'}")
        return 0
    r = evaluate_folder(model, meta, sets[0].path, out, run_dir=run_dir, split=args.split, **common)
    ci = r.interval("accuracy")
    print(f"n={r.n}  accuracy {r.accuracy:.4f}" + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
          + f"  balanced accuracy {r.balanced_accuracy:.4f}  macro-F1 {r.macro_f1:.4f}  "
          f"ECE {r.ece:.4f}  -> {out / 'report.html'}")
    calib = r.calibration
    if "ece_uncalibrated" in calib:
        print(f"calibration: ECE {calib['ece_uncalibrated']:.4f} at T=1 -> {calib['ece']:.4f} at the checkpoint's "
              f"T={calib['temperature']:.3f} (fitted on its validation split)")
    return 0


def cmd_adapt(args) -> int:
    from . import adapt
    from .checkpoint import resolve_checkpoint

    parent = resolve_checkpoint(args.checkpoint)
    if args.unlabelled:
        adapt.adapt_unlabelled(parent, args.unlabelled, args.out, progress=not args.no_progress)
        return 0
    if not args.data:
        raise WbcnetError("give --data (labelled cells of your lab) or --unlabelled (images only)")
    if args.shots:
        try:
            shots = sorted({int(k) for k in args.shots.split(",")})
        except ValueError:
            raise WbcnetError(f"--shots {args.shots}: give whole numbers of cells per class, e.g. 5,10,25") from None
        if min(shots) < 1 or args.repeats < 1:
            raise WbcnetError("--shots and --repeats must be at least 1")
        from .files import prepare_output_dir

        adapt.shots_curve(parent, args.data, prepare_output_dir(args.out, args.overwrite), shots, args.repeats,
                          seed=args.seed, epochs=args.epochs, progress=not args.no_progress)
        print(f"-> {Path(args.out) / 'learning_curve.md'}, learning_curve.png, learning_curve.csv")
        return 0
    run = adapt.adapt(parent, args.data, args.out, epochs=args.epochs, lr=args.lr, seed=args.seed,
                      progress=not args.no_progress)
    print(f"done: {run} (use it with --checkpoint {run})")
    return 0


def cmd_plot_confusion(args) -> int:
    from .plots import plot_confusion

    src = Path(args.source)
    metrics_json = src if src.suffix == ".json" else next(
        (p for p in (src / "metrics.json", src / "test" / "metrics.json") if p.exists()), None)
    if metrics_json is None or not metrics_json.exists():
        raise WbcnetError(f"{src}: no metrics.json here (give a metrics.json, an evaluation or a run folder)")
    out = Path(args.out) if args.out else metrics_json.parent / "confusion_matrix.png"
    plot_confusion(json.loads(metrics_json.read_text()), out)
    print(f"wrote {out}")
    return 0


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


def cmd_predict(args) -> int:
    from .checkpoint import load_model
    from .files import ensure_writable_file
    from .predict import predict_cells, write_rows

    if args.out not in (None, "-"):
        ensure_writable_file(args.out, "predictions CSV")  # before classifying thousands of files, not after
    paths = input_paths(args.inputs, "images to classify")
    model, meta = load_model(args.checkpoint)
    backend = None
    if args.backend == "onnxruntime":
        from .export import onnx_backend

        backend = onnx_backend(args.onnx or meta.path.with_suffix(".onnx"), meta, args.batch_size)
    cells = predict_cells(model, meta, paths, args.batch_size, args.workers, args.min_confidence, backend,
                          progress=not args.no_progress, tta=args.tta, shift_check=not args.no_shift_check)
    for c in cells:
        if c.error is not None:
            print(f"unreadable {c.file}: {c.error}", file=sys.stderr)
    write_rows([c.to_row(meta.classes, "predict") for c in cells], meta.classes, args.out)
    ok = sum(1 for c in cells if c.error is None)
    print(f"{ok} of {len(cells)} images classified" + (f" -> {args.out}" if args.out not in (None, "-") else ""),
          file=sys.stderr)
    return 0 if ok else 1


def cmd_count(args) -> int:
    from .checkpoint import load_model
    from .count import run_count
    from .files import prepare_output_dir
    from .inference import resolve_device
    from .render.count import CountOutput

    if args.target is not None and args.target < 1:
        raise WbcnetError(f"--target {args.target}: must be a number of cells, 1 or more")
    if args.truth and not Path(args.truth).is_file():
        raise WbcnetError(f"--truth {args.truth}: no such file")
    paths = input_paths(args.inputs, "field images")
    out = prepare_output_dir(args.out, args.overwrite, "count folder")
    model, meta = load_model(args.checkpoint)
    model.to(resolve_device(args.device))
    with CountOutput(out, meta.classes, draw_fields=not args.no_fields) as output:
        r = run_count(model, meta, paths, min_confidence=args.min_confidence, target=args.target,
                      truth_path=args.truth, batch_size=args.batch_size, workers=args.workers,
                      shift_check=not args.no_shift_check, progress=not args.no_progress, on_field=output.add_field)
        output.finish(r)
    for path, reason in r.unreadable:
        print(f"unreadable {path}: {reason}", file=sys.stderr)
    for text in r.warnings:
        print(f"warning: {text}", file=sys.stderr)
    print(f"{len(r.fields) - len(r.unreadable)} of {len(r.fields)} fields read, {r.cells_found} white cells found: "
          f"{r.counted} counted, {r.referred} referred, {r.edge_skipped} cut by the edge (not counted)")
    for name, c in r.differential.classes.items():
        print(f"  {name:<12} {c.count:>5}  {c.percent:5.1f}%  [{c.ci_low:.1f}, {c.ci_high:.1f}]  referred {c.referred}")
    if r.target is not None:
        print(f"target of {r.target} cells: " + ("reached" if r.target_reached else
                                                   f"NOT reached ({r.counted} counted; add fields)"))
    if r.truth is not None:
        t = r.truth
        acc = "n/a" if t["type_accuracy"] is None else f"{t['type_accuracy']:.3f} of {t['typed_matches']}"
        counted = "n/a" if t["type_accuracy_counted"] is None else \
            f"{t['type_accuracy_counted']:.3f} of {t['typed_counted']}"
        print(f"against {args.truth}: recall {t['recall']:.3f}, precision {t['precision']:.3f} "
              f"({t['matched']} matched of {t['true_boxes']} true, {t['found_boxes']} found); type accuracy {acc} "
              f"matched cells, {counted} counted ones")
    print(f"wrote {out}/count.html, cells.csv, differential.csv")
    return 0 if len(r.unreadable) < len(r.fields) else 1


def cmd_tune(args) -> int:
    from importlib.util import find_spec

    from .config import TrainConfig
    from .tune import DEFAULT_SPACE, read_space, tune

    if not find_spec("optuna"):
        raise WbcnetError("wbcnet tune needs Optuna: pip install -e '.[tune]' (or pip install optuna)")
    if args.trials < 1:
        raise WbcnetError(f"--trials {args.trials}: must be 1 or more")
    if args.epochs < 1:
        raise WbcnetError(f"--epochs {args.epochs}: must be 1 or more")
    if args.timeout is not None and args.timeout <= 0:
        raise WbcnetError(f"--timeout {args.timeout}: must be a number of seconds above 0")
    base = TrainConfig.from_yaml(args.config)
    space = read_space(args.space or DEFAULT_SPACE)
    out = Path(args.out or f"tune-{args.study}")
    s = tune(base, space, args.storage, args.study, args.trials, out, args.epochs, args.timeout, args.pruner, args.seed)
    best = s["best"]
    print(f"study {s['study']}: " + ", ".join(f"{n} {k}" for k, n in s["states"].items() if n))
    if best:
        print(f"best: trial {best['trial']}, validation macro-F1 {best['val_macro_f1']:.4f} -> {out / 'best.yaml'}")
    print(f"wrote {out}/tune.html, trials.csv")
    return 0 if best else 1


def cmd_serve(args) -> int:
    from importlib.util import find_spec

    from .checkpoint import load_model

    if not (find_spec("fastapi") and find_spec("uvicorn") and (find_spec("python_multipart") or find_spec("multipart"))):
        raise WbcnetError("wbcnet serve needs FastAPI, uvicorn and python-multipart, which wbcnet installs: "
                          "pip install -e .")
    from .serve.app import listen, serve

    if args.max_upload_mb <= 0 or args.max_files < 1:
        raise WbcnetError("--max-upload-mb and --max-files must be above 0")
    sock = listen(args.host, args.port, args.allow_remote)  # a busy port or a refused host fails before the model loads
    model, meta = load_model(args.checkpoint)
    try:
        serve(model, meta, sock, args.max_upload_mb, args.max_files, args.min_confidence)
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then passes Ctrl+C on: the way to stop, not a failure
        pass
    print("wbcnet serve: stopped", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx

    export_onnx(args.checkpoint, args.out, args.opset)  # raises, and writes nothing, if the check fails
    return 0


def cmd_data_audit(args) -> int:
    from .audit import format_table, run_audit
    from .files import prepare_output_dir

    out = prepare_output_dir(args.out or f"wbcnet-audit-{datetime.now():%Y%m%d-%H%M%S}", args.overwrite)
    result = run_audit(args.data, against=args.against, out_dir=out, workers=args.workers,
                       progress=not args.no_progress)
    print(format_table(result))
    print(f"\naudit.json and audit.html in {out}")
    return 0


def cmd_models(args) -> int:
    from .models import TIMM_EXAMPLES, list_models

    for name, desc in list_models().items():
        print(f"{name:12s} {desc}")
    print(f"{'<timm name>':12s} any timm model, trained from scratch (e.g. {', '.join(TIMM_EXAMPLES)}); "
          f"--pretrained PATH loads local weights")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out or f"wbcnet-demo-{datetime.now():%Y%m%d-%H%M%S}", args.epochs, args.seed, not args.no_progress)
    return 0


def _add_common(p, progress: bool = True):
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="wbcnet", description="White blood cell classification: train, evaluate, "
                                     "predict with a multi-head attention CNN.")
    parser.add_argument("--version", action="version", version=f"wbcnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on an ImageFolder or CSV manifest")
    p.add_argument("--config", help="YAML config (flags given override it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint "
                   "(with its own config; other flags are ignored)")
    add_train_flags(p)
    p.add_argument("--no-cache", action="store_true", help="decode into memory only (same as --cache-dir none)")
    _add_common(p, progress=False)  # --progress/--no-progress comes from the config
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a labelled folder")
    p.add_argument("--data", required=True, action="append", metavar="[NAME=]PATH",
                   help="ImageFolder or CSV manifest; classes matched by name. Repeat as NAME=PATH for several sets "
                        "(one folder each, plus summary.csv/.md and a summary report.html); with a multi-lab run's "
                        "split.csv, NAME=split.csv keeps that lab's rows")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="with --data RUN/split.csv: evaluate only that split of the run")
    p.add_argument("--checkpoint", help="run folder or .safetensors (default: the shipped model)")
    p.add_argument("--out", required=True, help="output folder (refused if it holds files, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="empty --out first if it holds files")
    p.add_argument("--run", help="run folder whose training curves to draw")
    p.add_argument("--no-explain", action="store_true", help="skip the Grad-CAM/attention grids")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--no-shift-check", action="store_true", help="don't flag cells unlike the training labs' cells")
    p.add_argument("--home", help="with several sets: the comma-separated sets of the training labs' own cells, "
                   "against which the shift score's AUROC is measured (default: sets named after a training lab, "
                   "or LAB_test)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average each cell's 8 turns and "
                   "mirror images (8x slower)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% confidence intervals (default 1000; 0: none)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int)
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("adapt", help="fit a model to your lab's cells: a few labelled ones, or unlabelled images")
    p.add_argument("--data", help="your labelled cells (ImageFolder or CSV manifest), e.g. 5-50 per class")
    p.add_argument("--unlabelled", metavar="DIR", help="your lab's images without labels: re-estimate the "
                   "normalisation statistics of a BatchNorm model (AdaBN)")
    p.add_argument("--checkpoint", help="model to start from: run folder or .safetensors (default: the shipped one)")
    p.add_argument("--out", required=True, help="new run folder (with --shots: a folder for the learning curve)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", help="comma-separated cells per class, e.g. 5,10,25,50: adapt on that many random "
                   "cells of --data, score on the rest, and draw the learning curve")
    p.add_argument("--repeats", type=int, default=5, help="draws per --shots value (default 5)")
    p.add_argument("--overwrite", action="store_true", help="with --shots: empty --out first")
    _add_common(p)
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("plot-confusion", help="redraw a confusion matrix from metrics.json or a run folder")
    p.add_argument("source", help="metrics.json, an evaluation folder or a run folder")
    p.add_argument("--out", help="PNG path (default: confusion_matrix.png beside metrics.json)")
    _add_common(p, progress=False)
    p.set_defaults(func=cmd_plot_confusion)

    p = sub.add_parser("predict", help="classify image files, folders or globs into a CSV")
    p.add_argument("inputs", nargs="+", help="files, folders or glob patterns")
    p.add_argument("--checkpoint", help="run folder or .safetensors (default: the shipped model)")
    p.add_argument("--out", default="-", help="CSV path (default: standard output)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="decode threads (default: all cores)")
    p.add_argument("--min-confidence", type=probability, default=0.0, help="below this, predict 'refer' (to a human)")
    p.add_argument("--no-shift-check", action="store_true", help="don't flag (and refer) cells unlike the training "
                   "labs' cells")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    p.add_argument("--tta", action="store_true", help="average each cell's 8 turns and mirror images (8x slower; "
                   "torch backend)")
    p.add_argument("--onnx", help="ONNX file for --backend onnxruntime (default: beside the checkpoint)")
    _add_common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("count", help="find, classify and count the white cells in whole smear fields")
    p.add_argument("inputs", nargs="+", help="field images: files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder (refused if it holds files, unless --overwrite)")
    p.add_argument("--checkpoint", help="run folder or .safetensors (default: the shipped model)")
    p.add_argument("--min-confidence", type=probability, default=0.0, help="below this a cell is 'refer' (to a human) "
                   "and left out of the differential")
    p.add_argument("--target", type=int, metavar="N", help="the number of cells the differential needs (e.g. 100 "
                   "or 200): say whether it was reached")
    p.add_argument("--truth", metavar="CSV", help="hand-drawn boxes, file,x0,y0,x1,y1[,label]: score the count "
                   "against them (detection recall/precision, type accuracy, differential error)")
    p.add_argument("--no-shift-check", action="store_true", help="don't refer cells unlike the training labs' cells")
    p.add_argument("--no-fields", action="store_true", help="don't draw every field into fields/")
    p.add_argument("--overwrite", action="store_true", help="empty --out first if it holds files")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="field-reading threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    _add_common(p)
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("tune", help="search hyperparameters with Optuna: short trials, pruned early, resumable")
    p.add_argument("--config", required=True, help="base training config (YAML), e.g. configs/multilab.yaml")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should hold (a resumed "
                   "study counts the ones it has)")
    p.add_argument("--storage", default="sqlite:///tune.db", help="Optuna storage URL: sqlite:///FILE for one machine, "
                   "postgresql://USER:PASS@HOST/DB for several (default sqlite:///tune.db)")
    p.add_argument("--study", default="wbcnet", help="study name in the storage (default wbcnet)")
    p.add_argument("--space", help="search space YAML (default: the package's assets/tune_space.yaml)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per trial (default 6)")
    p.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed; give each process of a shared study its own")
    p.add_argument("--out", help="folder for best.yaml, trials.csv, tune.html and the trials' runs (default tune-STUDY)")
    _add_common(p, progress=False)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("serve", help="a web page and REST API for classifying cells and counting fields")
    p.add_argument("--checkpoint", help="run folder or .safetensors (default: the shipped model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allow-remote", action="store_true", help="allow a --host other than a loopback address, so "
                   "that other machines can reach the server (it has no login)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body, MB (default 20; "
                   "larger gets 413)")
    p.add_argument("--max-files", type=int, default=64, help="most files per request (default 64)")
    p.add_argument("--min-confidence", type=probability, default=0.0, help="below this a cell is 'refer' (to a human); "
                   "a request may give its own ?min_confidence=")
    _add_common(p, progress=False)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--checkpoint", help="run folder or .safetensors (default: the shipped model)")
    p.add_argument("--out", help="ONNX path (default: beside the checkpoint, same name, .onnx)")
    p.add_argument("--opset", type=int, default=17)
    _add_common(p, progress=False)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("audit", help="class balance, unreadable files, sizes, duplicates and near-duplicates "
                            "(rotation/flip robust), colour shortcuts")
    p.add_argument("data", help="ImageFolder or CSV manifest")
    p.add_argument("--against", help="a second set: report the duplicates shared between the two")
    p.add_argument("--out", help="folder for audit.json and audit.html (default wbcnet-audit-<time>)")
    p.add_argument("--overwrite", action="store_true", help="empty --out first if it holds files")
    p.add_argument("--workers", type=int)
    _add_common(p)
    p.set_defaults(func=cmd_data_audit)

    p = sub.add_parser("models", help="list the models")
    _add_common(p, progress=False)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo", help="train, evaluate and plot on the bundled sample cells (about 1-2 minutes)")
    p.add_argument("--out", help="new folder for the results (default wbcnet-demo-<time>)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WbcnetError as e:
        if args.debug:
            raise
        print(f"wbcnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `wbcnet predict ... | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted" + ("; resume with: wbcnet train --resume <run folder>" if args.command == "train" else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
