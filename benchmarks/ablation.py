"""The leave-one-lab-out protocol and the ablation table of issue 8, in one command.

    python scripts/pack_crops.py --data raabin=... --data pbc=... --data bccd=... --out .packed
    python -m benchmarks.ablation --packed .packed --out runs/ablation --device cuda --parallel 4

1. One split, made once with wbcnet's own grouped split (per lab, seeded), written as manifests:
   every run trains and validates on the same cells and is tested on the same held-out ones.
2. Runs, each a `wbcnet train` on one lab, the other, or both, with one change switched on or off
   (RUNS below). Several run at once (`--parallel`), which suits one GPU or many cores.
3. Each model is evaluated with `wbcnet evaluate` on every lab's test split, on the whole of the
   lab it never saw, and on BCCD (never trained on); `--tta` adds test-time augmentation rows.
4. ablation.md / ablation.csv: one row per run, macro-F1 on each set.

The packed copies are the cell crops (crop=cell, 112 px) as WebP quality 85, so the runs train
with `--crop none`. It takes a GPU to finish in minutes; on this project's 2-core CPU each run
takes 10-20 minutes.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import train_resumable

# Every run starts from BASE; a run's overrides switch one thing on (or off).
BASE = {
    "model": "mhcnn", "img_size": 112, "crop": "none", "epochs": 30, "batch_size": 128, "lr": 0.002,
    "weight_decay": 0.05, "warmup_epochs": 2, "label_smoothing": 0.1, "balance": "sampler", "ema_decay": 0.998,
    "patience": 10, "seed": 0, "merge_near_duplicates": False,  # the split below already keeps them together
    "model_args": {"image_norm": True, "norm": "batch"},
    "augment": {"rotation": 30, "shift": 0.1, "shear": 0.15, "zoom": 0.15, "magnify": 1.25, "brightness": 0.15,
                "contrast": 0.15, "saturation": 0.4, "hue": 0.08, "channel_gain": 0.05},
}
STAIN = {"augment": {"hed": 0.05}}
BLUR = {"augment": {"blur": 0.3, "downscale": 2.0, "jpeg": 0.3}}
GROUP = {"model_args": {"norm": "group"}}
GRAY = {"augment": {"grayscale": 0.5}}
STRONG_STAIN = {"augment": {"hed": 0.2, "hue": 0.15}}
STAIN_NORM = {"stain": "nucleus"}
RUNS = [  # (name, labs trained on, overrides)
    ("raabin base", ["raabin"], []),
    ("raabin +groupnorm", ["raabin"], [GROUP]),
    ("raabin +stain", ["raabin"], [STAIN]),
    ("raabin +blur/res/jpeg", ["raabin"], [BLUR]),
    ("raabin all", ["raabin"], [GROUP, STAIN, BLUR]),
    ("raabin all +gray", ["raabin"], [GROUP, STAIN, BLUR, GRAY]),
    ("raabin all +strong stain", ["raabin"], [GROUP, STAIN, BLUR, STRONG_STAIN]),
    ("raabin all +stain norm", ["raabin"], [GROUP, STAIN, BLUR, STAIN_NORM]),
    ("pbc all", ["pbc"], [GROUP, STAIN, BLUR]),
    ("pbc all +stain norm", ["pbc"], [GROUP, STAIN, BLUR, STAIN_NORM]),
    ("both base", ["raabin", "pbc"], []),
    ("both all", ["raabin", "pbc"], [GROUP, STAIN, BLUR]),
    ("both all +stain norm", ["raabin", "pbc"], [GROUP, STAIN, BLUR, STAIN_NORM]),
]
LABS = ("raabin", "pbc")


def merged(base: dict, overrides: list[dict]) -> dict:
    out = json.loads(json.dumps(base))
    for o in overrides:
        for k, v in o.items():
            out[k] = {**out[k], **v} if isinstance(v, dict) else v
    return out


def make_split(packed: Path, out: Path, seed: int) -> None:
    """manifests/LAB_{train,val,test}.csv: each lab split once, grouped and stratified."""
    from wbcnet.training.config import TrainConfig
    from wbcnet.data.split import SPLITS
    from wbcnet.training.classifier import split_of

    cfg = TrainConfig(data={lab: str(packed / lab) for lab in LABS}, seed=seed, merge_near_duplicates=True,
                      progress=False)
    classes, split = split_of(cfg)  # the split `wbcnet train` would make of both labs
    (out / "manifests").mkdir(parents=True, exist_ok=True)
    for lab in LABS:
        for name in SPLITS:
            with open(out / "manifests" / f"{lab}_{name}.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "label", "group", "source"])
                for s in split[name]:
                    if s.source == lab:
                        w.writerow([os.path.abspath(s.path), classes[s.label], s.group, lab])
    for name in ("val", "test"):  # both labs together, for the runs that train on both
        with open(out / "manifests" / f"both_{name}.csv", "w", newline="") as fh:
            fh.write("path,label,group,source\n")
            for lab in LABS:
                fh.writelines((out / "manifests" / f"{lab}_{name}.csv").read_text().splitlines(True)[1:])


def share_of_cores(parallel: int) -> int:
    """Torch threads for each of `parallel` runs at once. Without a share each process takes every
    core, and K processes spinning K x cores OpenMP threads on small CPU steps (the JPEG/resize
    augmentation, the optimizer) ran an H100's runs slower than this 2-core CPU."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, parallel))


def run_env(threads: int | None) -> dict:
    """The environment for a run's subprocesses: OpenMP held to the run's share of the cores."""
    return {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}


def train_logged(cfg: dict, run: Path):
    """`wbcnet train` with `cfg` (written beside the run as RUN.yaml) into `run`, its output in
    RUN.log; a run already DONE is kept, one cut short is resumed. Returns (the open log, for the evaluation after it; seconds)."""
    t0 = time.time()
    if not (run / "DONE").exists():
        train_resumable(cfg, run, env=run_env(cfg.get("threads")))
    return open(run.parent / f"{run.name}.log", "a"), time.time() - t0


def run_one(name: str, labs: list[str], overrides: list[dict], args) -> dict:
    slug = name.replace(" ", "_").replace("+", "").replace("/", "-")
    run = args.out / "runs" / slug
    m = args.out / "manifests"
    cfg = merged(BASE, overrides)
    cfg.update(epochs=args.epochs, batch_size=args.batch_size, device=args.device, progress=False, cache_dir=None,
               workers=args.workers, threads=share_of_cores(args.parallel),
               data={lab: str(m / f"{lab}_train.csv") for lab in labs},
               val_data=str(m / (f"{labs[0]}_val.csv" if len(labs) == 1 else "both_val.csv")),
               test_data=str(m / (f"{labs[0]}_test.csv" if len(labs) == 1 else "both_test.csv")))
    log, train_s = train_logged(cfg, run)
    sets = [f"{lab}_test={m / f'{lab}_test.csv'}" for lab in LABS]
    sets += [f"{lab}_all={args.packed / lab}" for lab in LABS if lab not in labs] + [f"bccd={args.packed / 'bccd'}"]
    results = {}
    for tta in ([False, True] if args.tta else [False]):
        ev = run / ("eval_tta" if tta else "eval")
        cmd = [sys.executable, "-m", "wbcnet", "evaluate", "--checkpoint", str(run), "--out", str(ev), "--overwrite",
               "--no-progress", "--no-explain", "--bootstrap", "200", "--device", args.device] + (["--tta"] if tta else [])
        for s in sets:
            cmd += ["--data", s]
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, env=run_env(cfg["threads"]))
        with open(ev / "summary.csv") as fh:
            results["tta" if tta else "plain"] = {r["set"]: r for r in csv.DictReader(fh)}
    val_f1 = json.loads((run / "best.json").read_text())["val_macro_f1"]
    print(f"{name}: val macro-F1 {val_f1:.4f}, {train_s:.0f} s", flush=True)
    return {"name": name, "labs": "+".join(labs), "val_macro_f1": val_f1, "train_s": round(train_s), **results}


def write_table(rows: list[dict], out: Path, args) -> None:
    sets = ["raabin_test", "pbc_test", "pbc_all", "raabin_all", "bccd"]
    head = "| run | trained on | val macro-F1 | " + " | ".join(sets) + " | train s |"
    lines = [head, "|" + "---|" * (len(sets) + 4)]
    flat = []
    for r in rows:
        for kind in ("plain", "tta"):
            if kind not in r:
                continue
            cells = [r[kind][s]["macro_f1"] if s in r[kind] else "" for s in sets]
            label = r["name"] + (" +TTA" if kind == "tta" else "")
            lines.append(f"| {label} | {r['labs']} | {r['val_macro_f1']:.4f} | " + " | ".join(cells) +
                         f" | {r['train_s']} |")
            flat.append({"run": label, "labs": r["labs"], "val_macro_f1": round(r["val_macro_f1"], 4),
                         **{s: r[kind].get(s, {}).get("macro_f1", "") for s in sets},
                         **{f"{s}_ci": r[kind].get(s, {}).get("macro_f1_ci", "") for s in sets},
                         "train_s": r["train_s"]})
    note = (f"\nMacro-F1; `*_test`: that lab's held-out test split, `*_all`: every image of a lab the run never "
            f"trained on, `bccd`: BCCD crops (never trained on). {args.epochs} epochs, device {args.device}, "
            f"seed 0. Command: `python -m benchmarks.ablation --packed {args.packed} --out {args.out} "
            f"--device {args.device} --epochs {args.epochs}`.\n")
    (out / "ablation.md").write_text("\n".join(lines) + "\n" + note)
    with open(out / "ablation.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    print("\n".join(lines) + note)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--packed", type=Path, required=True, help="output of scripts/pack_crops.py (raabin, pbc, bccd)")
    p.add_argument("--out", type=Path, default=Path("runs/ablation"))
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=BASE["batch_size"])
    p.add_argument("--parallel", type=int, default=1, help="runs at once")
    p.add_argument("--workers", type=int, default=4, help="decode threads per run")
    p.add_argument("--only", help="comma-separated run names (default: all)")
    p.add_argument("--tta", action="store_true", help="also evaluate with test-time augmentation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "manifests" / "both_test.csv").exists():
        make_split(args.packed, args.out, args.seed)
    runs = [r for r in RUNS if not args.only or r[0] in args.only.split(",")]
    done: dict[str, dict] = {}
    lock = threading.Lock()

    def one(r):
        row = run_one(*r, args)
        with lock:  # the table so far, so a run cut short still leaves what finished
            done[r[0]] = row
            write_table([done[n] for n, *_ in runs if n in done], args.out, args)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(one, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
