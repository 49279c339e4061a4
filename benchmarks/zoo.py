"""The zoo side by side: each model's speed in whole commands and its figures, in one table.

    python -m benchmarks.zoo --out benchmarks/results/zoo.md [--pictures 1000] [--fields 120] [--rounds 3]
        [--lolo fast=runs/lolo --lolo accurate=runs/lolo-accurate]

Speed (issue 30: accurate >= 0.3x fast in predict and count, each beside a same-run reference):
`wbcnet predict DIR --model M` on N 575 px JPEGs (the bundled sample cells enlarged to Raabin-WBC's
original size, as benchmarks/predict_speed.py makes them) and `wbcnet count FIELDS --model M` on
BCCD's 640 x 480 fields, start-up included, each round after a PIL decode of the same pictures on one
thread (the reference), models alternated within a round so a busier minute hits both.

Figures: each installed model's card (its test splits, written by scripts/ship_model.py) and, where
given, a leave-one-lab-out folder of that recipe (benchmarks/lolo.py's lolo.csv: a model that
never saw the lab, scored on all of it).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import cpu_summary, git_state
from benchmarks.predict_speed import make_pictures

REPO = Path(__file__).resolve().parent.parent
FIELDS = REPO.parent / "shared" / "datasets" / "bccd-fields" / "images"


def seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def decode_rate(paths: list[Path]) -> float:
    from wbcnet.core.imageio import load_rgb

    t0 = time.perf_counter()
    for p in paths:
        load_rgb(p, 112)
    return len(paths) / (time.perf_counter() - t0)


def speed(models: list[str], n_pictures: int, n_fields: int, rounds: int) -> tuple[list[str], dict]:
    fields = sorted(FIELDS.glob("*.jpg"))[:n_fields] if FIELDS.is_dir() else []
    if not fields:
        fields = sorted((REPO / "tests" / "data" / "fields").glob("*.jpg"))
    got = {(m, what): [] for m in models for what in ("predict", "count")}
    refs = []
    with tempfile.TemporaryDirectory() as tmp:
        pictures = make_pictures(Path(tmp) / "cells", n_pictures)
        wbcnet = [sys.executable, "-m", "wbcnet"]
        for r in range(rounds):
            refs.append(decode_rate(pictures[:300]))
            for m in (models if r % 2 == 0 else models[::-1]):
                got[m, "predict"].append(n_pictures / seconds(
                    wbcnet + ["predict", str(Path(tmp) / "cells"), "--model", m, "--out", f"{tmp}/p.csv", "--no-progress"]))
                got[m, "count"].append(len(fields) / seconds(
                    wbcnet + ["count", *map(str, fields), "--model", m, "--out", f"{tmp}/c", "--overwrite",
                              "--no-progress", "--no-fields"]))
            print(f"round {r + 1}: decode {refs[-1]:.0f}/s; " + "; ".join(
                f"{m} {w} {got[m, w][-1]:.1f}/s" for m in models for w in ("predict", "count")), flush=True)
    lines = [f"| round | PIL decode, one thread (pictures/s) | " + " | ".join(
        f"{m} predict (img/s) | {m} count (fields/s)" for m in models) + " | " + " | ".join(
        f"{m}/{models[0]} {w}" for m in models[1:] for w in ("predict", "count")) + " |",
        "|---" * (2 + 2 * len(models) + 2 * (len(models) - 1)) + "|"]
    for r in range(rounds):
        lines.append(f"| {r + 1} | {refs[r]:.0f} | " + " | ".join(
            f"{got[m, 'predict'][r]:.1f} | {got[m, 'count'][r]:.2f}" for m in models) + " | " + " | ".join(
            f"{got[m, w][r] / got[models[0], w][r]:.2f}x" for m in models[1:] for w in ("predict", "count")) + " |")
    med = {k: statistics.median(v) for k, v in got.items()}
    lines.append(f"| median | {statistics.median(refs):.0f} | " + " | ".join(
        f"{med[m, 'predict']:.1f} | {med[m, 'count']:.2f}" for m in models) + " | " + " | ".join(
        f"{med[m, w] / med[models[0], w]:.2f}x" for m in models[1:] for w in ("predict", "count")) + " |")
    lines += ["", f"{n_pictures} pictures of 575 px for predict; {len(fields)} fields for count "
              f"({'BCCD, 640 x 480' if FIELDS.is_dir() and len(fields) > 6 else 'tests/data/fields'}); whole commands, start-up included."]
    return lines, med


def lolo_rows(folder: Path) -> dict[str, dict]:
    """lab -> its row of a leave-one-lab-out folder's lolo.csv (the model that never saw it)."""
    with open(folder / "lolo.csv") as fh:
        return {r["lab"]: r for r in csv.DictReader(fh) if "before" not in r["trained_on"]}


def figures(models: list[str], lolo: dict[str, Path]) -> list[str]:
    from wbcnet.models.zoo import ZOO

    labs = ("raabin", "pbc", "bccd")
    lines = ["| model | input | " + " | ".join(f"{lab} test split: acc / macro-F1 (95% CI)" for lab in labs) +
             " | N→E (Raabin test) | " + " | ".join(f"{lab} never seen: macro-F1 (95% CI) / blur+pale / yellow / "
                                                      f"low-res" for lab in labs) + " |",
             "|---" * (3 + 2 * len(labs)) + "|"]
    notes = []
    for m in models:
        meta = json.loads(ZOO[m].path.with_suffix(".json").read_text())
        figs = {f["set"].split()[0]: f for f in (meta.get("card") or {}).get("figures", [])}
        held = lolo_rows(lolo[m]) if m in lolo and (lolo[m] / "lolo.csv").is_file() else {}
        cells = []
        for lab in labs:
            f = figs.get(lab)
            cells.append(f"{f['accuracy']:.4f} / {f['macro_f1']:.4f} ({f['macro_f1_ci']})" if f else "not measured")
        cells.append(str(figs.get("raabin", {}).get("n_to_e", "")))
        for lab in labs:
            r = held.get(lab)
            cells.append(f"{float(r['macro_f1']):.3f} ({r['macro_f1_ci']}) / {float(r['standin_blur + pale']):.3f} / "
                         f"{float(r['standin_yellow cast']):.3f} / {float(r['standin_low-res camera']):.3f}"
                         if r else "not measured")
        lines.append(f"| `{m}` | {meta['img_size']} px | " + " | ".join(cells) + " |")
        pre = meta.get("pretrained") or {}
        if pre.get("method") and m in lolo:  # a backbone that saw every lab: the model's own recipe left no lab out
            notes.append(f"`{m}` starts from a `wbcnet pretrain` ({pre['method']}) backbone learned from every lab's "
                         "pictures, labels unused; its never-seen columns are its recipe from a random start "
                         "(benchmarks/results/pretrain.md has what the backbone buys).")
    return lines + [line for note in notes for line in ("", note)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "zoo.md")
    ap.add_argument("--pictures", type=int, default=1000)
    ap.add_argument("--fields", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lolo", action="append", default=[], metavar="MODEL=DIR",
                    help="that model's recipe left-one-lab-out (benchmarks/lolo.py --out DIR)")
    ap.add_argument("--no-speed", action="store_true", help="the figures only")
    args = ap.parse_args(argv)
    import torch

    from wbcnet.models.zoo import ZOO

    models = [m for m in ZOO if ZOO[m].installed]
    lolo = {k: Path(v) for k, v in (s.split("=", 1) for s in args.lolo)}
    cmd = "python -m benchmarks.zoo" + "".join(f" --lolo {s}" for s in args.lolo) + (
        f" --pictures {args.pictures} --fields {args.fields} --rounds {args.rounds}" if not args.no_speed else " --no-speed")
    lines = ["# The zoo: fast and accurate side by side (issue 30)", "", "```bash", cmd, "```", "",
             f"Commit {git_state()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. CPU: {cpu_summary()}; torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads, capability "
             f"{torch.backends.cpu.get_cpu_capability()}.", "", "## Figures", "",
             "Test splits: each model's card (`scripts/ship_model.py RUN --name M`), 95% bootstrap intervals. "
             "Never seen: the same recipe trained without that lab (`benchmarks/lolo.py`), scored on all of it, "
             "then macro-F1 on its stand-ins (`benchmarks/standins.py`).", "", *figures(models, lolo), ""]
    if not args.no_speed:
        rows, _ = speed(models, args.pictures, args.fields, args.rounds)
        lines += ["## Speed, whole commands", "", *rows, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
