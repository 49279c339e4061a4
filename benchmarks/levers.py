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
(`--teacher`, training/distill.py). Runs in a chain wait for the one before (the student for its
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
        code = subprocess.run([sys.executable, "-m", "wbcnet", "train", *how], stdout=log, stderr=subprocess.STDOUT, check=False,
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


def serve_at(run: Path, size: int, out: Path) -> None:
    """A copy of `run`'s best model that takes `size` px inputs: trained at one resolution, served
    at another (mhcnn's position table is resized to the token grid it meets)."""
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((run / "best.json").read_text())
    meta["img_size"] = size
    (out / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes())
    (out / "best.json").write_text(json.dumps(meta, indent=1))
    print(f"{out}: {run.name} served at {size} px")


def _predictions(folder: Path) -> list[dict]:
    with open(folder / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _scores(preds: list[dict]) -> tuple[float, float]:
    """(accuracy, macro-F1) of predictions.csv rows."""
    from wbcnet.evaluation.metrics import macro_f1

    classes = sorted({r["true"] for r in preds} | {r["predicted"] for r in preds})
    y = [classes.index(r["true"]) for r in preds]
    yhat = [classes.index(r["predicted"]) for r in preds]
    return sum(a == b for a, b in zip(y, yhat)) / len(y), macro_f1(y, yhat)


def ensemble(evals: list[Path], out: Path) -> None:
    """The members' probabilities averaged, cell by cell, from their evaluations (same sets, same
    order): an ensemble's scores without running the models again."""
    for lab in ("raabin", "pbc", "bccd"):
        members = [_predictions(e / lab) for e in evals]
        classes = [k[2:] for k in members[0][0] if k.startswith("p_")]
        rows = []
        for cells in zip(*members):
            assert len({c["path"] for c in cells}) == 1, "evaluations of different cells"
            p = [sum(float(c[f"p_{k}"]) for c in cells) / len(cells) for k in classes]
            best = max(range(len(classes)), key=p.__getitem__)
            rows.append({"path": cells[0]["path"], "true": cells[0]["true"], "predicted": classes[best],
                         "confidence": f"{p[best]:.4f}", **{f"p_{k}": f"{v:.4f}" for k, v in zip(classes, p)}})
        (out / lab).mkdir(parents=True, exist_ok=True)
        _write(out / lab / "predictions.csv", list(rows[0]), [list(r.values()) for r in rows])
        acc, f1 = _scores(rows)
        print(f"{out.name} {lab}: n={len(rows)} accuracy {acc:.4f} macro-F1 {f1:.4f}")


def table(out: Path, rows: list[str]) -> None:
    """levers.md: one row per lever from its evaluation folder (and its few-shot curve)."""
    lines = ["| lever | Raabin acc | Raabin macro-F1 | N->E errors | PBC macro-F1 | BCCD macro-F1 | BCCD k=10 "
             "macro-F1 | unfamiliar AUROC (BCCD) |", "|---|---|---|---|---|---|---|---|"]
    for spec in rows:
        name, folder = spec.split("=", 1)
        ev = out / "eval" / folder
        if not (ev / "raabin" / "predictions.csv").exists():
            lines.append(f"| {name} | not evaluated ({ev} is missing) |" + " |" * 6)
            continue
        cells = []
        summary = {}
        if (ev / "summary.csv").exists():
            with open(ev / "summary.csv", newline="") as fh:
                summary = {r["set"]: r for r in csv.DictReader(fh)}
        for lab in ("raabin", "pbc", "bccd"):
            preds = _predictions(ev / lab)
            acc, f1 = _scores(preds)
            if lab == "raabin":
                ne = sum(r["true"] == "Neutrophil" and r["predicted"] == "Eosinophil" for r in preds)
                cells += [f"{acc:.4f}", f"{f1:.4f}", str(ne)]
            else:
                cells.append(f"{f1:.4f}")
        curve = out / "shots" / folder / "learning_curve.csv"
        if curve.exists():
            with open(curve, newline="") as fh:
                k10 = [float(r["macro_f1"]) for r in csv.DictReader(fh) if r.get("shots") == "10"]
            cells.append(f"{sum(k10) / len(k10):.3f} ({len(k10)} draws)" if k10 else "")
        else:
            cells.append("")
        cells.append(summary.get("bccd", {}).get("shift_auroc", "") or "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "levers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


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
    s = sub.add_parser("serve-at")
    s.add_argument("run", type=Path)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("ensemble", help="average the probabilities of evaluations of several models")
    s.add_argument("evals", type=Path, nargs="+")
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("table")
    s.add_argument("--out", type=Path, default=Path("runs/levers"))
    s.add_argument("rows", nargs="+", help="LABEL=EVAL_FOLDER_NAME, in table order")
    args = p.parse_args(argv)
    if args.cmd == "serve-at":
        serve_at(args.run, args.size, args.out)
    elif args.cmd == "ensemble":
        ensemble(args.evals, args.out)
    elif args.cmd == "table":
        table(args.out, args.rows)
    elif args.cmd == "prepare":
        prepare(args.packed, args.split)
    elif args.cmd == "train":
        train(args)
    else:
        adopt(args.packed, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
