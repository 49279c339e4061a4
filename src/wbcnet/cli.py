"""`wbcnet` command line: argument parsing only, one function per subcommand."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

SAMPLE = Path(__file__).parent / "assets" / "sample"


def _train_config(args):
    from .config import TrainConfig

    cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    for name in ("data", "val_data", "test_data", "model", "epochs", "img_size", "batch_size", "lr", "seed", "out",
                 "optimizer", "balance", "pretrained", "cache_dir", "workers", "threads", "patience", "ema_decay"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(cfg, name, value)
    if args.no_cache:
        cfg.cache_dir = None
    if args.no_bf16:
        cfg.bf16, cfg.channels_last = False, False
    if args.classes:
        cfg.classes = [c.strip() for c in args.classes.split(",")]
    if args.no_progress:
        cfg.progress = False
    return cfg


def cmd_train(args) -> int:
    from .train import fit

    if args.resume:
        run = fit(None, resume=args.resume)
    else:
        run = fit(_train_config(args))
    print(f"done: {run}")
    return 0


def cmd_evaluate(args) -> int:
    from .checkpoint import load_model
    from .evaluate import evaluate_folder

    model, meta = load_model(args.checkpoint)
    print(f"model: {meta['checkpoint_path']} ({meta['model']}, classes {', '.join(meta['classes'])})")
    out = Path(args.out)
    run_dir = args.run or (Path(meta["checkpoint_path"]).parent if args.checkpoint else None)
    result = evaluate_folder(model, meta, args.data, out, run_dir=run_dir, split=args.split, batch_size=args.batch_size,
                             workers=args.workers, progress=not args.no_progress, explain_maps=not args.no_explain,
                             n_resamples=args.bootstrap)
    ci = result["ci"].get("accuracy")
    print(f"n={result['n']}  accuracy {result['accuracy']:.4f}" + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
          + f"  balanced accuracy {result['balanced_accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
          f"ECE {result['ece']:.4f}  -> {out / 'report.html'}")
    calib = result.get("calibration", {})
    if "ece_uncalibrated" in calib:
        print(f"calibration: ECE {calib['ece_uncalibrated']:.4f} at T=1 -> {calib['ece']:.4f} at the checkpoint's "
              f"T={calib['temperature']:.3f} (fitted on its validation split)")
    return 0


def cmd_plot_confusion(args) -> int:
    from .plots import plot_confusion

    src = Path(args.source)
    metrics_json = src if src.suffix == ".json" else next(
        (p for p in (src / "metrics.json", src / "test" / "metrics.json") if p.exists()), None)
    if metrics_json is None or not metrics_json.exists():
        raise FileNotFoundError(f"{src}: no metrics.json here (give a metrics.json, an evaluation or a run folder)")
    out = Path(args.out) if args.out else metrics_json.parent / "confusion_matrix.png"
    plot_confusion(json.loads(metrics_json.read_text()), out)
    print(f"wrote {out}")
    return 0


def cmd_predict(args) -> int:
    from .checkpoint import load_model
    from .predict import expand_inputs, predict_paths, write_rows

    paths, skipped = expand_inputs(args.inputs)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    model, meta = load_model(args.checkpoint)
    backend = None
    if args.backend == "onnxruntime":
        from .export import onnx_backend

        backend = onnx_backend(args.onnx or Path(meta["checkpoint_path"]).with_suffix(".onnx"), meta, args.batch_size)
    rows = predict_paths(model, meta, paths, args.batch_size, args.workers, args.min_confidence, backend,
                         progress=not args.no_progress)
    for r in rows:
        if r["error"]:
            print(f"unreadable {r['path']}: {r['error']}", file=sys.stderr)
    write_rows(rows, meta["classes"], args.out)
    ok = sum(1 for r in rows if not r["error"])
    print(f"{ok} of {len(rows)} images classified" + (f" -> {args.out}" if args.out not in (None, "-") else ""),
          file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .export import TOLERANCE, export_onnx

    path, diff = export_onnx(args.checkpoint, args.out, args.opset)
    if diff >= TOLERANCE:
        print(f"wbcnet export: error: ONNX Runtime and PyTorch disagree (max abs difference {diff:.2e} "
              f">= {TOLERANCE:.0e}); {path} is not to be trusted", file=sys.stderr)
        return 1
    return 0


def cmd_data_audit(args) -> int:
    from .audit import format_table, run_audit

    out = Path(args.out or f"wbcnet-audit-{datetime.now():%Y%m%d-%H%M%S}")
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
    from .checkpoint import SHIPPED, load_model
    from .config import TrainConfig
    from .predict import expand_inputs, predict_paths, write_rows
    from .train import fit

    out = Path(args.out or f"wbcnet-demo-{datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; pick another --out")
    cfg = TrainConfig(data=str(SAMPLE), out=str(out / "run"), model="mhcnn", img_size=96, epochs=args.epochs,
                      batch_size=32, lr=2e-3, warmup_epochs=2, patience=0, val_frac=0.2, test_frac=0.2,
                      seed=args.seed, cache_dir=None, progress=not args.no_progress)
    print(f"demo: training mhcnn on the bundled sample ({SAMPLE}), {cfg.epochs} epochs")
    run = fit(cfg)
    if SHIPPED.with_suffix(".safetensors").exists():
        model, meta = load_model(None)
        paths, _ = expand_inputs([str(SAMPLE)])
        rows = predict_paths(model, meta, paths, progress=not args.no_progress)
        write_rows(rows, meta["classes"], out / "shipped_model_predictions.csv")
        truth = [Path(p).parent.name for p in paths]
        acc = sum(r["predicted"] == t for r, t in zip(rows, truth)) / max(1, len(rows))
        print(f"shipped model on the {len(rows)} sample cells: accuracy {acc:.4f} "
              f"-> {out / 'shipped_model_predictions.csv'}\n  (the sample comes from the images it was trained on: "
              f"this shows it runs, not how good it is; MODEL_CARD.md has held-out scores)")
    print(f"\nresults in {out.resolve()}:")
    for p in sorted((run / "test").iterdir()):
        print(f"  {p}")
    return 0


def _add_common(p):
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="wbcnet", description="White blood cell classification: train, evaluate, "
                                     "predict with a multi-head attention CNN.")
    parser.add_argument("--version", action="version", version=f"wbcnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on an ImageFolder or CSV manifest")
    p.add_argument("--data", help="ImageFolder (one folder per class) or CSV manifest path,label[,group]")
    p.add_argument("--val", dest="val_data", help="separate validation ImageFolder (default: split from --data)")
    p.add_argument("--test", dest="test_data", help="separate test ImageFolder (default: split from --data)")
    p.add_argument("--classes", help="comma-separated class names to train on (default: every class folder)")
    p.add_argument("--model", help="mhcnn (default), seed-mhcnn, or a timm model name")
    p.add_argument("--pretrained", help="local weights file to start from (.safetensors); never downloaded")
    p.add_argument("--epochs", type=int)
    p.add_argument("--img-size", type=int, help="training size in pixels (default: the model's, 112 for mhcnn)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--balance", choices=["weighted_loss", "sampler", "none"], help="minority classes: class-weighted "
                   "loss (default), a balanced sampler, or nothing")
    p.add_argument("--ema-decay", type=float, help="EMA of weights, e.g. 0.999 (0: off)")
    p.add_argument("--patience", type=int, help="early stopping patience in epochs (0: off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="new run folder (default runs/<model>-<time>); never overwritten")
    p.add_argument("--config", help="YAML config (flags override it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--cache-dir", help="decode cache folder (default .cache/wbcnet)")
    p.add_argument("--no-cache", action="store_true", help="decode into memory only")
    p.add_argument("--no-bf16", action="store_true", help="fp32 and contiguous layout even where bf16 is supported")
    p.add_argument("--workers", type=int, help="decode threads")
    p.add_argument("--threads", type=int, help="torch threads")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a labelled folder")
    p.add_argument("--data", required=True, help="ImageFolder or CSV manifest; classes matched by name")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="with --data RUN/split.csv: evaluate only that split of the run")
    p.add_argument("--checkpoint", help="run folder or .safetensors (default: the shipped model)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--run", help="run folder whose training curves to draw")
    p.add_argument("--no-explain", action="store_true", help="skip the Grad-CAM/attention grids")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% confidence intervals (default 1000; 0: none)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int)
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plot-confusion", help="redraw a confusion matrix from metrics.json or a run folder")
    p.add_argument("source", help="metrics.json, an evaluation folder or a run folder")
    p.add_argument("--out", help="PNG path (default: confusion_matrix.png beside metrics.json)")
    p.set_defaults(func=cmd_plot_confusion)

    p = sub.add_parser("predict", help="classify image files, folders or globs into a CSV")
    p.add_argument("inputs", nargs="+", help="files, folders or glob patterns")
    p.add_argument("--checkpoint", help="run folder or .safetensors (default: the shipped model)")
    p.add_argument("--out", default="-", help="CSV path (default: standard output)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="decode threads (default: all cores)")
    p.add_argument("--min-confidence", type=float, default=0.0, help="below this, predict 'refer' (to a human)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    p.add_argument("--onnx", help="ONNX file for --backend onnxruntime (default: beside the checkpoint)")
    _add_common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--checkpoint", help="run folder or .safetensors (default: the shipped model)")
    p.add_argument("--out", help="ONNX path (default: beside the checkpoint, same name, .onnx)")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("audit", help="class balance, unreadable files, sizes, duplicates and near-duplicates "
                            "(rotation/flip robust), colour shortcuts")
    p.add_argument("data", help="ImageFolder or CSV manifest")
    p.add_argument("--against", help="a second set: report the duplicates shared between the two")
    p.add_argument("--out", help="folder for audit.json and audit.html (default wbcnet-audit-<time>)")
    p.add_argument("--workers", type=int)
    _add_common(p)
    p.set_defaults(func=cmd_data_audit)

    p = sub.add_parser("models", help="list the models")
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
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"wbcnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted" + ("; resume with: wbcnet train --resume <run folder>" if args.command == "train" else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
