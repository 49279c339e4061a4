"""The shipped recipe, leave-one-lab-out: issue 28's table in one command.

    python -m benchmarks.lolo --out runs/lolo --copy-to benchmarks/results/lolo.md

1. Trains the recipe (`configs/multilab.yaml`, every lab in view) once with every lab (`all`, the
   model `scripts/ship_model.py` ships) and once without each lab (`no-raabin`, `no-pbc`,
   `no-bccd`), each with `wbcnet train`: progress on the screen, the output in OUT/NAME.log, and a
   run cut short goes on from its last epoch when the command is run again (a finished one is
   kept). The runs share each lab's decode cache, so the cells are found once.
2. Scores each left-out model on every picture of the lab it never saw, and on that lab's stand-ins
   (benchmarks/standins.py: a seeded draw of its pictures, clean and degraded with PIL/scipy code
   that is not the training augmentation: blur + pale, yellow cast, low-res camera).
3. Writes OUT/lolo.md (and --copy-to): each lab's figure from the model that never saw it. Nothing
   in it chose the recipe on the lab it reports: the checkpoint of each run is chosen on the
   validation split of the labs it trained on.

`--before CHECKPOINT` adds a row for a model that never saw `--before-lab` (BCCD by default), for
a before/after comparison on the same pictures, e.g. the model shipped before issue 28:
    mkdir -p runs/before && for f in model.safetensors model.json; do
      git show 065310b:src/wbcnet/assets/$f > runs/before/$f; done
    python -m benchmarks.lolo --out runs/lolo --before runs/before/model
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks import standins
from benchmarks.common import train_resumable
from wbcnet.models.checkpoint import git_commit, resolve_checkpoint

REPO = Path(__file__).resolve().parent.parent
LABS = ("raabin", "pbc", "bccd")
FOLDS = {"all": None, "no-bccd": "bccd", "no-pbc": "pbc", "no-raabin": "raabin"}
STANDIN_N = 1000  # pictures a lab, per kind (BCCD has 351: all of them)


def fold_config(recipe: dict, left_out: str | None, epochs: int | None) -> dict:
    cfg = json.loads(json.dumps(recipe))
    cfg["data"] = {lab: path for lab, path in recipe["data"].items() if lab != left_out}
    if epochs:
        cfg["epochs"] = epochs
    cfg["progress"] = False  # one line an epoch in the log and on the screen, not a bar
    return cfg


def train(name: str, cfg: dict, out: Path) -> float:
    """`wbcnet train` into OUT/NAME, resumed where it was cut short; its output to the screen and
    OUT/NAME.log. Returns the seconds it took (the epochs' seconds for a run finished before)."""
    run = out / name
    if (run / "DONE").exists():
        print(f"{name}: trained before ({run})", flush=True)
        return epoch_seconds(run)
    print(f"{name}: training on {', '.join(cfg['data'])} "
          f"({'resuming' if (run / 'last.json').exists() else 'from scratch'}; log {out / name}.log)", flush=True)
    return train_resumable(cfg, run, echo=name)


def epoch_seconds(run: Path) -> float:
    """The seconds of a finished run's epochs, from its metrics.csv."""
    with open(run / "metrics.csv") as fh:
        return sum(float(r["epoch_s"]) for r in csv.DictReader(fh) if r.get("epoch_s"))


def evaluate(run: Path, sets: dict[str, Path], out: Path, log: Path) -> dict[str, dict]:
    """`wbcnet evaluate` of RUN on each set (kept if done before); set name -> metrics.json."""
    if not (out / "DONE").exists():
        cmd = [sys.executable, "-m", "wbcnet", "evaluate", "--checkpoint", str(run), "--out", str(out), "--overwrite",
               "--no-progress", "--no-explain", "--bootstrap", "1000"]
        for name, path in sets.items():
            cmd += ["--data", f"{name}={path}"]
        with open(log, "a") as fh:
            subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True)
        (out / "DONE").write_text("")
    return {name: json.loads((out / name / "metrics.json").read_text()) for name in sets}


def confusions(m: dict, k: int = 3) -> str:
    short = lambda c: c[0]
    return ", ".join(f"{short(c['true'])}→{short(c['predicted'])} {c['count']}" for c in m["top_confusions"][:k])


def write_table(rows: list[dict], out: Path, args, recipe_path: Path, seconds: dict) -> str:
    commit = git_commit() or "unknown"
    kinds = [k for k in standins.KINDS if k != "clean"]
    lines = [
        "# The recipe, leave-one-lab-out (issue 28)",
        "",
        "```bash",
        f"python -m benchmarks.lolo --out {args.out}" + (f" --epochs {args.epochs}" if args.epochs else "") +
        (f" --config {args.config}" if args.config != REPO / "configs" / "multilab.yaml" else "") +
        (f" --start-from {args.start_from}" if args.start_from else "") +
        "".join(f" --set {kv}" for kv in args.set) + (f" --only {args.only}" if args.only else "") +
        (f" --before {args.before}" if args.before else ""),
        "```",
        "",
        f"- Recipe: `{recipe_path.relative_to(REPO) if recipe_path.is_relative_to(REPO) else recipe_path}`; "
        f"commit `{commit}`; seed 0; {os.cpu_count()}-CPU machine, CPU only.",
        "- Each row: the model trained on the other labs (`no-LAB`), its checkpoint chosen on their validation "
        "split, scored on every picture of the lab it never saw. Macro-F1 with its 95% bootstrap interval "
        "(1000 resamples).",
        "- Stand-ins: a seeded, class-stratified draw of that lab's pictures (up to "
        f"{STANDIN_N}), scored clean and degraded by `benchmarks/standins.py` (PIL/scipy, not the training "
        "augmentation; its own settings): " + "; ".join(f"`{k}`" for k in kinds) + ". "
        "`gap`: the largest drop from the clean draw.",
        "",
        "| lab left out | model trained on | n | macro-F1 (95% CI) | accuracy | top mistakes | "
        "clean draw | " + " | ".join(kinds) + " | gap |",
        "|---|---|---|---|---|---|---|" + "---|" * len(kinds) + "---|",
    ]
    for r in rows:
        m, s = r["whole"], r["standins"]
        clean = s["clean"]["macro_f1"]
        gap = max(clean - s[k]["macro_f1"] for k in kinds)
        lines.append(f"| {r['lab']} | {r['trained_on']} | {m['n']} | {m['macro_f1']:.3f} ({r['ci']}) | "
                     f"{m['accuracy']:.3f} | {confusions(m)} | {clean:.3f} | " +
                     " | ".join(f"{s[k]['macro_f1']:.3f}" for k in kinds) + f" | {gap:.3f} |")
    recipe_epochs = yaml.safe_load(recipe_path.read_text()).get("epochs")
    if args.epochs and args.epochs != recipe_epochs:
        lines += ["", f"These runs trained {args.epochs} epochs where the recipe (and the shipped model) trains "
                      f"{recipe_epochs}: fewer, for time."]
    lines += ["", "Training time (epochs only, this machine, minutes): " +
              ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items() if v), ""]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lolo.md").write_text(text)
    with open(out / "lolo.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["lab", "trained_on", "n", "macro_f1", "macro_f1_ci", "accuracy"] + [f"standin_{k}" for k in standins.KINDS])
        for r in rows:
            w.writerow([r["lab"], r["trained_on"], r["whole"]["n"], r["whole"]["macro_f1"], r["ci"], r["whole"]["accuracy"]] +
                       [r["standins"][k]["macro_f1"] for k in standins.KINDS])
    return text


def ci_of(m: dict) -> str:
    ci = m.get("ci", {}).get("macro_f1")
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "—"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lolo", description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "multilab.yaml", help="the recipe")
    ap.add_argument("--out", type=Path, default=Path("runs/lolo"))
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs")
    ap.add_argument("--only", help="comma-separated runs of " + ", ".join(FOLDS) + " (default: all of them)")
    ap.add_argument("--train-only", action="store_true", help="train, don't score")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the recipe for a comparison, e.g. --set stain=nucleus (YAML value; repeatable); "
                    "the runs are named NAME+KEY=VALUE")
    ap.add_argument("--before", type=Path, metavar="CHECKPOINT", help="also score this model (e.g. the one shipped "
                    "before) on --before-lab, which it never saw, and its stand-ins: a before/after row")
    ap.add_argument("--before-lab", default="bccd")
    ap.add_argument("--copy-to", type=Path, help="also write the table here")
    ap.add_argument("--start-from", type=Path, metavar="LOLO_DIR", help="a recipe that starts from another model's "
                    "weights (configs/accurate.yaml starts from fast's): each run starts from LOLO_DIR/RUN/best, "
                    "the run of the same name that never saw the same lab, so no fold sees its lab through its start")
    args = ap.parse_args(argv)
    recipe = yaml.safe_load(args.config.read_text())
    suffix = ""
    for kv in args.set:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"--set {kv}: write KEY=VALUE")
        recipe[key] = yaml.safe_load(value)
        suffix += f"+{key}={value}"
    paths = {lab: Path(p) if Path(p).is_absolute() else (REPO / p) for lab, p in recipe["data"].items()}
    missing = [str(p) for p in paths.values() if not p.is_dir()]
    if missing:
        raise SystemExit(f"{', '.join(missing)}: not found (the recipe's data; run from a checkout beside shared/)")
    args.out.mkdir(parents=True, exist_ok=True)
    folds = [f for f in FOLDS if not args.only or f in args.only.split(",")]
    seconds = {}
    for name in folds:
        cfg = fold_config(recipe, FOLDS[name], args.epochs)
        if args.start_from:
            cfg["pretrained"] = str((args.start_from / name / "best.safetensors").resolve())
        seconds[name + suffix] = train(name + suffix, cfg, args.out)
    if args.train_only:
        return 0
    rows = []
    for name in folds:
        lab = FOLDS[name]
        if lab is None:
            continue
        name += suffix
        print(f"{name}: scoring on {lab} (never seen) and its stand-ins", flush=True)
        draws = standins.make(paths[lab], args.out / "standins" / lab, n=STANDIN_N)
        log = args.out / f"{name}.log"
        whole = evaluate(args.out / name, {lab: paths[lab]}, args.out / "eval" / name / "whole", log)[lab]
        kinds = evaluate(args.out / name, {standins.slug(k): d for k, d in draws.items()},
                         args.out / "eval" / name / "standins", log)
        rows.append({"lab": lab, "trained_on": ", ".join(l for l in recipe["data"] if l != lab) + suffix, "whole": whole,
                     "ci": ci_of(whole), "standins": {k: kinds[standins.slug(k)] for k in draws}})
        print(f"  {lab}: macro-F1 {whole['macro_f1']:.3f}; stand-ins " +
              ", ".join(f"{k} {v['macro_f1']:.3f}" for k, v in rows[-1]["standins"].items()), flush=True)
    if args.before:
        lab = args.before_lab
        draws = standins.make(paths[lab], args.out / "standins" / lab, n=STANDIN_N)
        meta = json.loads(resolve_checkpoint(args.before).with_suffix(".json").read_text())
        seen = [s["name"] for s in meta.get("sources", [])]
        if lab in seen:
            raise SystemExit(f"--before {args.before}: it trained on {lab}; it can't give that lab's figure")
        log = args.out / "before.log"
        whole = evaluate(args.before, {lab: paths[lab]}, args.out / "eval" / "before" / "whole", log)[lab]
        kinds = evaluate(args.before, {standins.slug(k): d for k, d in draws.items()},
                         args.out / "eval" / "before" / "standins", log)
        made = f", recipe of commit {meta['git_commit']}" if meta.get("git_commit") else ""
        rows.append({"lab": lab, "trained_on": f"{', '.join(seen)} (before: `{args.before}`{made})", "whole": whole,
                     "ci": ci_of(whole), "standins": {k: kinds[standins.slug(k)] for k in draws}})
    if rows:
        text = write_table(rows, args.out / f"lolo{suffix}" if suffix else args.out, args, args.config.resolve(), seconds)
        print(text)
        if args.copy_to:
            args.copy_to.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
