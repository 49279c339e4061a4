"""Issue 20's levers for in-lab accuracy, trained where there is a GPU, scored here on the real images.

    # here: cut the run's train/val cells at 160 px (the test split stays here) and write manifests
    python scripts/pack_crops.py --data raabin=../shared/datasets/raabin-wbc-train \\
        --data pbc=../shared/datasets/pbc-5class --out .packed160 --size 160 --quality 75 \\
        --rows runs/multilab-lf/split.csv --splits train,val
    python -m benchmarks.levers prepare --packed .packed160 --split runs/multilab-lf/split.csv
    # on the GPU machine (or here, slowly: --device cpu --parallel 1)
    python -m benchmarks.levers train --packed .packed160 --out runs/levers --device cuda --parallel 3
    # here again: give each model the crop its packed cells had, then evaluate it on real images
    python -m benchmarks.levers adopt --packed .packed160 runs/levers/runs/*

Every run is `wbcnet train` with the shipped recipe (configs/multilab.yaml) on the same cells of
the same split as runs/multilab-lf (the recipe on learned-finder crops, trained here), changing
one thing: the resolution, the model's width and depth (a teacher), or a teacher to learn from
(`--teacher`, distill.py). Runs in a chain wait for the one before (the student for its
teacher); chains run side by side, each with its share of the cores.

The packed cells are WebP at quality 75, so the runs train with `--crop none` on what the cell
crop made; `adopt` writes that crop into each model's metadata (its preprocessing), after which
`wbcnet evaluate` scores it like any checkpoint, on the original pictures.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "multilab.yaml"
WIDE = {"widths": [48, 128, 256, 384], "depth": 4, "heads": 8}  # ~4x the channels' work of mhcnn's default, 2x the depth
RUNS = {  # name: overrides of the recipe
    "mhcnn-112": {"img_size": 112},
    "mhcnn-160": {"img_size": 160},
    "wide-160": {"img_size": 160, "model_args": WIDE},
    "distilled-112": {"img_size": 112, "teacher": "mhcnn-160"},  # the best teacher of the three above
}
CHAINS = [["mhcnn-160", "distilled-112"], ["wide-160"], ["mhcnn-112"]]
LABS = ("raabin", "pbc")


def prepare(packed: Path, split_csv: Path) -> None:
    """PACKED/manifests/{raabin,pbc}_train.csv and both_val.csv: the run's split, by packed file."""
    out = packed / "manifests"
    out.mkdir(parents=True, exist_ok=True)
    rows = {(lab, name): [] for lab in LABS for name in ("train", "val")}
    missing = 0
    with open(split_csv, newline="") as fh:
        for r in csv.DictReader(fh):
            if r["split"] not in ("train", "val"):
                continue
            rel = Path(r["source"]) / r["label"] / (Path(r["path"]).stem + ".webp")
            if not (packed / rel).exists():
                missing += 1
                continue
            rows[r["source"], r["split"]].append(["../" + rel.as_posix(), r["label"], r["group"]])
    head = ["path", "label", "group"]
    for lab in LABS:
        _write(out / f"{lab}_train.csv", head, rows[lab, "train"])
    _write(out / "both_val.csv", head, rows["raabin", "val"] + rows["pbc", "val"])
    print(f"manifests in {out}: " + ", ".join(f"{k[0]} {k[1]} {len(v)}" for k, v in rows.items())
          + (f"; {missing} rows without a packed file (no cell found, or unreadable)" if missing else ""))


def _write(path: Path, head: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        w.writerows(rows)


def run_config(name: str, args) -> dict:
    cfg = yaml.safe_load(RECIPE.read_text())
    over = dict(RUNS[name])
    cfg["model_args"] = {**cfg.get("model_args", {}), **over.pop("model_args", {})}
    if "teacher" in over:
        over["teacher"] = str(args.out / "runs" / over["teacher"])
    m = args.packed / "manifests"
    cfg.update(over)
    cfg.update(data={lab: str(m / f"{lab}_train.csv") for lab in LABS}, val_data=str(m / "both_val.csv"),
               test_frac=0.0, crop="none", merge_near_duplicates=False, cache_dir=None, progress=False,
               device=args.device, workers=min(8, max(1, len(os.sched_getaffinity(0)) // args.parallel)),
               threads=max(1, len(os.sched_getaffinity(0)) // args.parallel))
    if args.epochs:
        cfg["epochs"] = args.epochs
    return cfg


def train_one(name: str, args, t_start: float) -> str:
    run = args.out / "runs" / name
    if (run / "DONE").exists():
        return f"{name}: done before"
    if args.deadline and time.time() - t_start > args.deadline:
        return f"{name}: not started (past the {args.deadline} s deadline)"
    cfg = run_config(name, args)
    run.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = run.parent / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    how = ["--resume", str(run)] if (run / "last.json").exists() else ["--config", str(cfg_path), "--out", str(run)]
    t0 = time.time()
    with open(run.parent / f"{name}.log", "a") as log:
        code = subprocess.run([sys.executable, "-m", "wbcnet", "train", *how], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": str(cfg["threads"])}).returncode
    note = f"{name}: {'finished' if code == 0 else f'failed (exit {code})'} in {time.time() - t0:.0f} s"
    print(note, flush=True)
    return note


def train(args) -> None:
    t_start = time.time()
    chains = [[n for n in c if not args.only or n in args.only.split(",")] for c in CHAINS]

    def chain(names):
        return [train_one(n, args, t_start) for n in names]

    with ThreadPoolExecutor(args.parallel) as pool:
        for notes in pool.map(chain, [c for c in chains if c]):
            print("\n".join(notes))


def adopt(packed: Path, runs: list[Path]) -> None:
    """Write the packed cells' crop into each run's best.json as its preprocessing: the model was
    trained on what that crop made, so it is what `wbcnet evaluate` and `predict` must do."""
    prep = json.loads((packed / "pack.json").read_text())["preprocess"]
    for run in runs:
        meta_path = run / "best.json"
        if not meta_path.exists():
            print(f"{run}: no best.json, skipped")
            continue
        meta = json.loads(meta_path.read_text())
        meta["preprocess"] = prep
        meta_path.write_text(json.dumps(meta, indent=1))
        print(f"{run}: preprocessing {prep}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.levers", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--packed", type=Path, required=True)
    s.add_argument("--split", type=Path, required=True, help="the run's split.csv the packed cells came from")
    s = sub.add_parser("train")
    s.add_argument("--packed", type=Path, required=True)
    s.add_argument("--out", type=Path, default=Path("runs/levers"))
    s.add_argument("--device", default="auto")
    s.add_argument("--parallel", type=int, default=len(CHAINS), help="chains at once")
    s.add_argument("--epochs", type=int, help="override the recipe's epochs (a smoke test)")
    s.add_argument("--only", help="comma-separated run names")
    s.add_argument("--deadline", type=float, help="seconds after which no new run starts")
    s = sub.add_parser("adopt")
    s.add_argument("--packed", type=Path, required=True)
    s.add_argument("runs", type=Path, nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.packed, args.split)
    elif args.cmd == "train":
        train(args)
    else:
        adopt(args.packed, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
