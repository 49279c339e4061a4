"""`wbcnet` command line: argument parsing only, one function per subcommand; each flag is declared on the field
it sets (core/flags.py). User errors (WbcnetError, a full disk) are one line with exit code 2 (`--debug` shows the
traceback); anything else is a bug in wbcnet and keeps its traceback. Parsing imports neither torch nor numpy."""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path

from ..core.errors import WbcnetError
from ..core.files import disk_full, disk_full_message, earlier_outputs_kept
from .finder import add_parser as add_finder_commands
from .options import (AdaptOptions, AuditOptions, CountOptions, DemoOptions, EvaluateOptions, ExportOptions,
                      InferenceOptions, PlotOptions, PredictOptions, PretrainOptions, ServeOptions, TrainOptions,
                      TuneOptions, add_flags, add_pretrain_flags, from_args, input_paths, shared_flags)


def cmd_train(args) -> int:
    from ..training.classifier import fit
    from ..training.config import config_from_args, ignored_on_resume

    if args.resume and ignored_on_resume(args):
        print(f"note: --resume continues {args.resume} with its own config.yaml; ignoring "
              f"{', '.join(ignored_on_resume(args))}", file=sys.stderr)
    run = fit(None, resume=args.resume) if args.resume else fit(config_from_args(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"done: {run}")
    return 0


def cmd_evaluate(args) -> int:
    from ..core.files import prepare_output_dir
    from ..data.sources import parse_sources
    from ..evaluation.evaluate import evaluate_folder, evaluate_sets

    opts = InferenceOptions.from_args(args)
    sets = parse_sources(args.data)
    out = prepare_output_dir(args.out, args.overwrite)
    model, meta = opts.load_model()
    run_dir = args.run or (meta.path.parent if args.checkpoint else None)
    common = dict(batch_size=opts.batch_size, workers=opts.workers, progress=not args.no_progress,
                  explain_maps=not args.no_explain, n_resamples=args.bootstrap, tta=opts.tta,
                  shift_check=opts.shift_check)
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
    if calib.ece_uncalibrated is not None:
        print(f"calibration: ECE {calib.ece_uncalibrated:.4f} at T=1 -> {calib.ece:.4f} at the checkpoint's "
              f"T={calib.temperature:.3f} (fitted on its validation split)")
    return 0


def cmd_adapt(args) -> int:
    from .adapt import run_command

    return run_command(InferenceOptions.from_args(args), from_args(AdaptOptions, args), args)


def cmd_pretrain(args) -> int:
    from ..training.pretrain import run_command

    return run_command(from_args(PretrainOptions, args), args)  # lightly needed, and said first


def cmd_plot_confusion(args) -> int:
    from ..render.plots import plot_confusion

    metrics, out = from_args(PlotOptions, args).read()
    plot_confusion(metrics, out)
    print(f"wrote {out}")
    return 0


def cmd_predict(args) -> int:
    from ..core.files import ensure_writable_file
    from ..inference.predict import predict_cells, write_rows

    opts = InferenceOptions.from_args(args)
    if args.out not in (None, "-"):
        ensure_writable_file(args.out, "predictions CSV")  # before classifying thousands of files, not after
    paths = input_paths(args.inputs, "images to classify")
    model, meta = opts.load_model()
    backend = None
    if args.backend == "onnxruntime":
        from ..inference.export import default_onnx_path, onnx_backend

        backend = onnx_backend(args.onnx or default_onnx_path(meta.path), meta, opts.batch_size)
    cells = predict_cells(model, meta, paths, batch_size=opts.batch_size, workers=opts.workers,
                          min_confidence=opts.min_confidence, backend=backend, progress=not args.no_progress,
                          tta=opts.tta, shift_check=opts.shift_check)
    for c in cells:
        if c.error is not None:
            print(f"unreadable {c.file}: {c.error}", file=sys.stderr)
    write_rows([c.to_row(meta.classes, "predict") for c in cells], meta.classes, args.out)
    ok = sum(1 for c in cells if c.error is None)
    print(f"{ok} of {len(cells)} images classified" + (f" -> {args.out}" if args.out not in (None, "-") else ""),
          file=sys.stderr)
    return 0 if ok else 1


def cmd_count(args) -> int:
    from ..core.files import prepare_output_dir
    from ..inference.count import run_count
    from ..render.count import CountOutput

    opts, count_opts = InferenceOptions.from_args(args), from_args(CountOptions, args)  # checked before any field is read
    paths = input_paths(args.inputs, "field images")
    out = prepare_output_dir(args.out, args.overwrite, "count folder")
    model, meta = opts.load_model()
    meta.preprocess = {**(meta.preprocess or {}), **({"finder": count_opts.finder} if count_opts.finder else {})}
    with CountOutput(out, meta.classes, draw_fields=not args.no_fields) as output:
        r = run_count(model, meta, paths, min_confidence=opts.min_confidence, target=args.target,
                      truth_path=args.truth, batch_size=opts.batch_size, workers=opts.workers,
                      shift_check=opts.shift_check, progress=not args.no_progress, on_field=output.add_field)
        output.finish(r)
    for path, reason in r.unreadable:
        print(f"unreadable {path}: {reason}", file=sys.stderr)
    for text in r.warnings:
        print(f"warning: {text}", file=sys.stderr)
    print(f"{len(r.fields) - len(r.unreadable)} of {len(r.fields)} fields read, {r.cells_found} white cells found: "
          f"{r.counted} counted, {r.referred} referred, {r.edge_skipped} cut by the edge (not counted); "
          f"{r.rejected} other objects judged not white cells")
    for name, c in r.differential.classes.items():
        print(f"  {name:<12} {c.count:>5}  {c.percent:5.1f}%  [{c.ci_low:.1f}, {c.ci_high:.1f}]  referred {c.referred}")
    if r.target is not None:
        print(f"target of {r.target} cells: " + ("reached" if r.target_reached else
                                                   f"NOT reached ({r.counted} counted; add fields)"))
    if r.truth is not None:
        t = r.truth
        acc = "n/a" if t.type_accuracy is None else f"{t.type_accuracy:.3f} of {t.typed_matches}"
        counted = "n/a" if t.type_accuracy_counted is None else f"{t.type_accuracy_counted:.3f} of {t.typed_counted}"
        print(f"against {args.truth}: recall {t.recall:.3f}, precision {t.precision:.3f} "
              f"({t.matched} matched of {t.true_boxes} true, {t.found_boxes} found); type accuracy {acc} "
              f"matched cells, {counted} counted ones")
    print(f"wrote {out}/count.html, cells.csv, differential.csv")
    if len(r.unreadable) == len(r.fields):
        return 1
    return 3 if r.cells_found == 0 else 0  # fields read, but not one white cell: not a count


def cmd_tune(args) -> int:
    from ..training.config import TrainConfig
    from ..training.tune import DEFAULT_SPACE, read_space, tune

    t = from_args(TuneOptions, args)  # Optuna needed, and said first
    out = Path(t.out or f"tune-{t.study}")
    s = tune(TrainConfig.from_yaml(t.config), read_space(t.space or DEFAULT_SPACE), t.storage, t.study, t.trials, out,
             epochs=t.epochs, timeout=t.timeout, pruner=t.pruner, seed=t.seed)
    best = s["best"]
    print(f"study {s['study']}: " + ", ".join(f"{n} {k}" for k, n in s["states"].items() if n))
    if best:
        print(f"best: trial {best['trial']}, validation macro-F1 {best['val_macro_f1']:.4f} -> {out / 'best.yaml'}")
    print(f"wrote {out}/tune.html, trials.csv")
    return 0 if best else 1


def cmd_serve(args) -> int:
    opts, o = InferenceOptions.from_args(args), from_args(ServeOptions, args)  # FastAPI and uvicorn there
    from ..serve.app import run_command

    return run_command(opts, o)


def cmd_export(args) -> int:
    from ..inference.export import export_onnx

    export_onnx(args.checkpoint, args.out, args.opset)  # raises, and writes nothing, if the check fails
    return 0


def cmd_data_audit(args) -> int:
    from ..core.files import prepare_output_dir
    from ..data.audit import run_audit
    from ..render.audit import format_table, write_audit

    out = prepare_output_dir(args.out or f"wbcnet-audit-{datetime.now():%Y%m%d-%H%M%S}", args.overwrite)
    audit = run_audit(args.data, against=args.against, workers=args.workers, progress=not args.no_progress)
    write_audit(audit, out)
    print(format_table(audit))
    print(f"\naudit.json and audit.html in {out}")
    return 0


def cmd_models(args) -> int:
    from .models import run_command

    return run_command(args)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out or f"wbcnet-demo-{datetime.now():%Y%m%d-%H%M%S}", args.epochs, args.seed, not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..training.config import add_train_flags

    parser = argparse.ArgumentParser(prog="wbcnet", description="White blood cell classification: train, evaluate, "
                                     "predict with a multi-head attention CNN.")
    parser.add_argument("--version", action="version", version=f"wbcnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    model = ("checkpoint", "device", "threads")  # every command that runs a model

    def command(name, func, help, *shared, options=None, progress=True, under=sub, batch_size=64):
        flags = shared_flags("debug", *["no_progress"] * progress, *shared, batch_size=batch_size)
        p = under.add_parser(name, help=help, parents=[flags])
        if options is not None:
            add_flags(p, options)
        p.set_defaults(func=func)
        return p

    add_train_flags(command("train", cmd_train, "train a model on an ImageFolder or CSV manifest", options=TrainOptions,
                            progress=False))  # --progress/--no-progress is a TrainConfig field
    command("evaluate", cmd_evaluate, "evaluate a checkpoint on a labelled folder", *model, "out_dir", "batch_size",
            "workers", "shift_check", "tta", "overwrite", options=EvaluateOptions, batch_size=128)
    command("adapt", cmd_adapt, "fit a model to your lab: a few labelled cells, its unlabelled pictures, or both; --suggest which to label", *model,
            "workers", "overwrite", options=AdaptOptions)
    add_pretrain_flags(command("pretrain", cmd_pretrain, "self-supervised pretraining (SimCLR) of the backbone on "
                               "cells without labels", "device", "threads", "workers"))
    command("plot-confusion", cmd_plot_confusion, "redraw a confusion matrix from metrics.json or a run folder",
            options=PlotOptions, progress=False)
    command("predict", cmd_predict, "classify image files, folders or globs into a CSV", "inputs", *model,
            "batch_size", "workers", "min_confidence", "shift_check", "tta", options=PredictOptions)
    command("count", cmd_count, "find, classify and count the white cells in whole smear fields", "inputs", *model,
            "out_dir", "batch_size", "workers", "min_confidence", "shift_check", "overwrite", options=CountOptions)
    command("tune", cmd_tune, "search hyperparameters with Optuna: short trials, pruned early, resumable",
            options=TuneOptions, progress=False)
    command("serve", cmd_serve, "a web page and REST API for classifying cells and counting fields", *model,
            "min_confidence", options=ServeOptions, progress=False)
    command("export", cmd_export, "export a checkpoint to ONNX, checked against PyTorch", "checkpoint",
            options=ExportOptions, progress=False)
    data_sub = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    command("audit", cmd_data_audit, "class balance, unreadable files, sizes, duplicates and near-duplicates "
            "(rotation/flip robust), colour shortcuts", "workers", "overwrite", options=AuditOptions, under=data_sub)
    command("models", cmd_models, "the models wbcnet comes with (fast, accurate) and the architectures to train",
            progress=False).add_argument("--no-speed", action="store_true", help="don't time each model here")
    command("demo", cmd_demo, "train, evaluate and plot on the bundled sample cells (about 1-2 minutes)",
            options=DemoOptions)
    add_finder_commands(sub, [shared_flags("debug", "no_progress")])  # wbcnet finder train / evaluate
    return parser


def interrupted(args) -> str:
    """What Ctrl-C says: for train, where the run stands."""
    if args.command != "train":
        return "interrupted"
    run = getattr(args, "resume", None) or getattr(args, "out", None)
    if not run or (Path(run) / "last.safetensors").exists():
        return f"interrupted; resume with: wbcnet train --resume {run or '<run folder>'}"
    return (f"interrupted before the first checkpoint: {run} can't be resumed; start the run again"
            if Path(run).exists() else "interrupted before the first checkpoint: nothing of the run was kept")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # A folder --overwrite replaces is put back as it was if the command is stopped or fails.
        with earlier_outputs_kept():
            return args.func(args)
    except BrokenPipeError:  # `wbcnet predict ... | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (WbcnetError, OSError) as e:  # a user's mistake, or a full disk (the user's to fix, whoever found it)
        if args.debug or not (isinstance(e, WbcnetError) or disk_full(e)):
            raise
        print(f"wbcnet {args.command}: error: {e if isinstance(e, WbcnetError) else disk_full_message(e)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n" + interrupted(args), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
