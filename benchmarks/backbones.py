"""The backbone comparison: six models, one split, one recipe, one budget.

    python scripts/pack_crops.py --data raabin=... --data pbc=... --data bccd=... --out .packed
    python -m benchmarks.backbones train --packed .packed --out runs/backbones --device cpu --epochs 3 \
        --cache-dir .cache/wbcnet
    python -m benchmarks.backbones speed --out runs/backbones        # on the CPU that will run them
    python -m benchmarks.backbones table --out runs/backbones        # backbones.md from both

`train` makes the split once (each lab grouped and stratified, seed 0, as benchmarks/ablation.py),
trains every model on both labs' training cells with the same recipe and number of epochs
(`wbcnet train`, the shipped model's augmentation, AdamW, balanced sampler, EMA), and evaluates
each with `wbcnet evaluate` on each lab's test split and on BCCD (never trained on). `speed`
measures what the table's speed columns say on this machine: training steps (forward, backward,
AdamW) and batch inference, img/s, bf16 autocast and channels_last where the CPU has bf16.
The cells are the packed cell crops (crop=cell, 112 px); every model sees them at 112 px.

On a GPU, `--device cuda --parallel N` runs N at once, each with its share of the CPU's cores
(torch threads and OMP_NUM_THREADS). One try on an H100 with --parallel 6, before the runs had
shares, finished no epoch in 8 minutes: six processes each spinning 16 OpenMP threads on small
CPU steps. With shares, the ablation's five parallel runs on an H100 trained at 1,400-5,700 img/s
each (slowest with the JPEG augmentation, which runs on the CPU; benchmarks/results/ablation.md);
the backbones have not been rerun there.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.ablation import BASE, LABS, make_split, merged, run_env, share_of_cores, train_logged

SIZE = 112
# name, model_args. Ours take img_size; timm's ViT takes it too (7x7 patches of 16 at 112 px);
# the convolutional timm models take any size. All from scratch: nothing is downloaded.
MODELS = [
    ("seed-mhcnn", {}),
    ("mhcnn", {"image_norm": True, "norm": "group"}),
    ("resnet18", {}),
    ("mobilenetv3_large_100", {}),
    ("convnext_atto", {}),
    ("vit_tiny_patch16_224", {"img_size": SIZE}),
]
RECIPE = merged(BASE, [{"augment": {"hed": 0.1, "blur": 0.3, "downscale": 2.5, "jpeg": 0.3}}])
SETS = ["raabin_test", "pbc_test", "bccd"]


def train_one(name: str, model_args: dict, args) -> dict:
    run = args.out / "runs" / name
    m = args.out / "manifests"
    cfg = dict(RECIPE, model=name, model_args=model_args, img_size=SIZE, epochs=args.epochs, batch_size=args.batch_size,
               device=args.device, progress=False, cache_dir=args.cache_dir, workers=args.workers, patience=0,
               threads=share_of_cores(args.parallel),
               data={lab: str(m / f"{lab}_train.csv") for lab in LABS},
               val_data=str(m / "both_val.csv"), test_data=str(m / "both_test.csv"))
    cfg["model_args"] = model_args  # not the recipe's mhcnn arguments
    log, wall = train_logged(cfg, run)
    ev = run / "eval"
    cmd = [sys.executable, "-m", "wbcnet", "evaluate", "--checkpoint", str(run), "--out", str(ev), "--overwrite",
           "--no-progress", "--no-explain", "--bootstrap", "500", "--device", args.device,
           "--data", f"raabin_test={m / 'raabin_test.csv'}", "--data", f"pbc_test={m / 'pbc_test.csv'}",
           "--data", f"bccd={args.packed / 'bccd'}"]
    subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, env=run_env(cfg["threads"]))
    with open(ev / "summary.csv") as fh:
        sets = {r["set"]: r for r in csv.DictReader(fh)}
    best = json.loads((run / "best.json").read_text())
    result = {"model": name, "val_macro_f1": best["val_macro_f1"], "best_epoch": best["best_epoch"],
              "epochs": args.epochs, "wall_s": round(wall), "device": args.device_name, "sets": sets}
    (args.out / "results").mkdir(exist_ok=True)
    (args.out / "results" / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(f"{name}: val macro-F1 {best['val_macro_f1']:.4f}, {wall:.0f} s", flush=True)
    return result


def cmd_train(args) -> None:
    import torch

    args.device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "manifests" / "both_test.csv").exists():
        make_split(args.packed, args.out, 0)
    models = [m for m in MODELS if not args.only or m[0] in args.only.split(",")]
    lock = threading.Lock()

    def one(m):
        try:
            train_one(*m, args)
        except subprocess.CalledProcessError as e:
            with lock:
                print(f"{m[0]}: failed ({e}); see {args.out / 'runs' / (m[0] + '.log')}", flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(one, models))


def cmd_speed(args) -> None:
    """img/s of training steps and of batch inference on this machine's CPU, per model."""
    import numpy as np

    from benchmarks.bench import Settings, make_model, training_img_per_s
    from benchmarks.common import median_seconds
    from wbcnet.inference.runner import predict_logits, use_bf16

    bf16 = use_bf16()
    s = Settings(train_warmup=2, train_steps=5)
    out = {}
    for name, model_args in MODELS:
        model = make_model(name, SIZE, model_args)
        params = sum(p.numel() for p in model.parameters())
        train = training_img_per_s(name, SIZE, bf16, s, model_args)
        images = np.random.default_rng(0).integers(0, 256, (128, 3, SIZE, SIZE), dtype=np.uint8)
        infer = 128 / median_seconds(lambda: predict_logits(model, images, [0.5] * 3, [0.2] * 3, 128, bf16), 1, 3)
        out[name] = {"params": params, "train_img_s": round(train, 1), "infer_img_s": round(infer, 1), "bf16": bf16,
                     "batch": s.batch}
        print(f"{name}: {params / 1e6:.2f} M parameters, train {train:.0f} img/s, inference {infer:.0f} img/s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(out, indent=2))


def _f1(sets: dict, name: str) -> str:
    r = sets.get(name)
    if not r:
        return ""
    ci = r.get("macro_f1_ci", "").replace("-", "–")
    return f"{float(r['macro_f1']):.3f} ({ci})" if ci else f"{float(r['macro_f1']):.3f}"


def cmd_table(args) -> None:
    speed = json.loads((args.out / "speed.json").read_text()) if (args.out / "speed.json").exists() else {}
    lines = ["| model | parameters | train img/s (CPU) | inference img/s (CPU) | training wall | best epoch | val macro-F1 | "
             "Raabin test macro-F1 | Raabin test accuracy | PBC test macro-F1 | BCCD macro-F1 (never trained on) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    device = ""
    for name, _ in MODELS:
        sp = speed.get(name, {})
        path = args.out / "results" / f"{name}.json"
        r = json.loads(path.read_text()) if path.exists() else None
        device = r["device"] if r else device
        cells = [f"`{name}`", f"{sp['params'] / 1e6:.2f} M" if sp else "", f"{sp.get('train_img_s', '')}",
                 f"{sp.get('infer_img_s', '')}"]
        if r:
            raabin = r["sets"].get("raabin_test", {})
            cells += [f"{r['wall_s']} s", f"{r['best_epoch']}/{r['epochs']}", f"{r['val_macro_f1']:.4f}",
                      _f1(r["sets"], "raabin_test"), f"{float(raabin['accuracy']):.4f}" if raabin else "",
                      _f1(r["sets"], "pbc_test"), _f1(r["sets"], "bccd")]
        else:
            cells += ["not run"] + [""] * 6
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nOne split (each lab grouped and stratified 70/15/15, seed 0), trained on both labs' training cells, "
            f"{RECIPE['batch_size']} a batch, the shipped model's augmentation, AdamW lr {RECIPE['lr']}, EMA, balanced "
            f"sampler, from scratch, 112 px cell crops; trained on {device or 'the GPU'} (training wall: the `wbcnet train` "
            f"command, decoding from the shared cache included). Speed columns: "
            f"this machine's CPU, batch 64 training steps and batch 128 inference, bf16 autocast + channels_last. "
            f"Macro-F1 with the bootstrap 95% interval (500 resamples).\n")
    (args.out / "backbones.md").write_text("\n".join(lines) + "\n" + note)
    print("\n".join(lines) + "\n" + note)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backbones", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("--packed", type=Path, required=True)
    t.add_argument("--out", type=Path, default=Path("runs/backbones"))
    t.add_argument("--device", default="cuda")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    t.add_argument("--parallel", type=int, default=3)
    t.add_argument("--workers", type=int, default=4)
    t.add_argument("--only", help="comma-separated model names")
    t.add_argument("--cache-dir", help="decode cache shared by the runs (default: none, each decodes into memory)")
    for name in ("speed", "table"):
        q = sub.add_parser(name)
        q.add_argument("--out", type=Path, default=Path("runs/backbones"))
    args = p.parse_args(argv)
    {"train": cmd_train, "speed": cmd_speed, "table": cmd_table}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
