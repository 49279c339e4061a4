"""What a `wbcnet pretrain` backbone buys a recipe: models side by side on cells no backbone saw.

    python -m benchmarks.pretrain_gain --split runs/lolo/all/split.csv \
        --model fast=runs/lolo/all --model "fast from SimCLR"=runs/fast-simclr \
        --standins runs/pre-eval/standins --out benchmarks/results/pretrain.md

Each model is scored (wbcnet.evaluation.evaluate_sets, 1,000 bootstrap resamples) on
- each lab's test split of `--split` (a backbone pretrained on that split's train and val rows,
  as runs/pretrain-all was, never saw these cells; the fine-tuned model never did either);
- the stand-ins in `--standins LAB/KIND/` (benchmarks/standins.py, made from those test splits by
  PIL and scipy, never by the training augmentation), each kind beside the clean copy of the same
  cells, with the unfamiliar-cell check's AUROC of each kind against the clean test splits.

Not here, and why: leave-one-lab-out, k = 10 adaptation and a new lab's unfamiliar-cell AUROC need a
lab no backbone has seen, so a backbone pretrained without it (one per fold, hours each here).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import cpu_summary, git_state, n_to_e, table_lines

LABS = ("raabin", "pbc")


def score(name: str, run: str, split: str, standins: Path | None, out: Path, threads: int | None) -> dict:
    """{set: summary row} for one model, its evaluation folders under out/NAME/."""
    import torch

    from wbcnet.evaluation.evaluate import evaluate_sets
    from wbcnet.models import checkpoint as ckpt

    if threads:
        torch.set_num_threads(threads)
    model, meta = ckpt.load_model(ckpt.resolve_checkpoint(run))
    sets = [(lab, split) for lab in LABS]
    if standins:
        sets += [(f"{lab} {kind.name}", str(kind)) for lab in LABS if (standins / lab).is_dir()
                 for kind in sorted((standins / lab).iterdir()) if kind.is_dir()]
    folder = out / name.replace(" ", "-")
    rows = evaluate_sets(model, meta, [(s.replace(" ", "_"), p) for s, p in sets], folder, split="test",
                         progress=False, n_resamples=1000, home=list(LABS), explain_maps=False)
    got = {}
    for (s, _), r in zip(sets, rows):
        r["n_to_e"] = n_to_e(json.loads((folder / s.replace(" ", "_") / "metrics.json").read_text()))
        got[s] = r
    return got


def table(results: dict[str, dict], standins: bool) -> list[str]:
    header = ["model"] + [f"{lab} test split: acc / macro-F1 (95% CI)" for lab in LABS] + ["N→E (Raabin test)"]
    kinds = sorted({s.split(" ", 1)[1] for r in results.values() for s in r if " " in s and not s.endswith("clean")})
    if standins:
        header += [f"{lab} stand-ins: clean / " + " / ".join(kinds) + " macro-F1" for lab in LABS]
        header += [f"unfamiliar AUROC against the test splits, {k} (raabin / pbc)" for k in ["clean"] + kinds]
    rows = []
    for name, r in results.items():
        row = [f"`{name}`"] + [f"{r[lab]['accuracy']:.4f} / {r[lab]['macro_f1']:.4f} ({r[lab]['macro_f1_ci']})"
                               for lab in LABS] + [r["raabin"]["n_to_e"]]
        if standins:
            for lab in LABS:
                row.append(" / ".join(f"{r[f'{lab} {k}']['macro_f1']:.3f}" if f"{lab} {k}" in r else "-"
                                      for k in ["clean"] + kinds))
            for k in ["clean"] + kinds:
                aucs = [r[f"{lab} {k}"].get("shift_auroc") for lab in LABS if f"{lab} {k}" in r]
                row.append(" / ".join(f"{a:.3f}" if isinstance(a, float) else "-" for a in aucs))
        rows.append(row)
    return table_lines(header, rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pretrain_gain", description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", required=True, help="the split.csv every model shares (its test rows are scored)")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=RUN",
                    help="a run folder, checkpoint or zoo name, repeated")
    ap.add_argument("--standins", type=Path, help="benchmarks/standins.py folders: LAB/KIND/CLASS/*.jpg")
    ap.add_argument("--work", type=Path, default=Path("runs/pretrain-gain"), help="evaluation folders")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--note", default="", help="a line under the table: what each model is")
    ap.add_argument("--out", type=Path, required=True, help="markdown file")
    args = ap.parse_args(argv)

    results = {}
    for spec in args.model:
        name, _, run = spec.partition("=")
        print(f"scoring {name}: {run}", flush=True)
        results[name] = score(name, run, args.split, args.standins, args.work, args.threads)
    lines = ["# What pretraining buys (issue 30)", "",
             f"`python -m benchmarks.pretrain_gain` at {git_state()}, on {cpu_summary()}; split `{args.split}`, "
             f"evaluation folders under `{args.work}`.", ""]
    lines += table(results, args.standins is not None)
    lines += ["", args.note] if args.note else []
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
