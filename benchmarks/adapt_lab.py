"""Adaptation as a lab would do it on day one, on labs the parent never saw: issue 28's protocol.

    python -m benchmarks.adapt_lab --lolo runs/lolo --out runs/adapt-lab --copy-to benchmarks/results/adapt_lab.md

For each lab left out of a leave-one-lab-out run (`benchmarks.lolo`: `no-LAB` never saw LAB) and
for its stand-ins (benchmarks/standins.py: degraded with PIL/scipy code that is not the training
augmentation):
- 10 cells of each class are drawn as the labelled ones (seeded; a class with fewer keeps one to
  score), up to 500 others are the lab's unlabelled cells, and those others are scored, as the
  issue measured the blurred lab;
- `none`: the parent as it is; `prototypes`: the parent's features unchanged, each cell given the
  class whose labelled cells' mean feature is nearest (cosine; no training, a linear head on the
  lab's features); `labels`: `wbcnet adapt --data LABELLED`; `labels + unlabelled`:
  `wbcnet adapt --data LABELLED --unlabelled OTHERS` (fine-tuning on the labels, then
  self-training on the others); each timed on this machine.
Writes OUT/adapt_lab.md (and --copy-to). Resumable: a finished adaptation or score is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import standins
from benchmarks.lolo import confusions
from wbcnet.models.checkpoint import git_commit, resolve_checkpoint
from wbcnet.core.errors import WbcnetError

LABELS_PER_CLASS = 10
UNLABELLED = 500
METHODS = ("none", "prototypes", "labels", "labels + unlabelled")
# (lab, stand-in kind): the lab's own pictures, and the degraded copies the issue asks for
SETTINGS = (("pbc", "clean"), ("pbc", "blur + pale"), ("pbc", "yellow cast"), ("bccd", "clean"),
            ("raabin", "clean"), ("raabin", "blur + pale"))


def has_checkpoint(path: Path) -> bool:
    try:
        resolve_checkpoint(path)
        return True
    except WbcnetError:
        return False


def split_cells(folder: Path, out: Path, seed: int) -> tuple[Path, Path]:
    """out/labelled and out/others, as symbolic links into `folder`'s class folders."""
    lab_dir, rest_dir = out / "labelled", out / "others"
    if (out / "DONE").exists():
        return lab_dir, rest_dir
    rng = random.Random(seed)
    others = []
    for c in sorted(d for d in folder.iterdir() if d.is_dir()):
        files = sorted(p for p in c.iterdir() if p.is_file())
        rng.shuffle(files)
        k = min(LABELS_PER_CLASS, len(files) - 1)
        for p in files[:k]:
            (lab_dir / c.name).mkdir(parents=True, exist_ok=True)
            (lab_dir / c.name / p.name).symlink_to(p.resolve())
        others += [(c.name, p) for p in files[k:]]
    rng.shuffle(others)
    for c, p in others[:UNLABELLED]:
        (rest_dir / c).mkdir(parents=True, exist_ok=True)
        (rest_dir / c / p.name).symlink_to(p.resolve())
    (out / "DONE").write_text("")
    return lab_dir, rest_dir


def wbcnet(args: list[str], log: Path) -> float:
    t0 = time.time()
    with open(log, "a") as fh:
        r = subprocess.run([sys.executable, "-m", "wbcnet", *args], stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"wbcnet {' '.join(args[:1])} failed (exit {r.returncode}); see {log}")
    return time.time() - t0


def score(checkpoint: Path, data: Path, out: Path, log: Path) -> dict:
    if not (out / "metrics.json").exists():
        wbcnet(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--overwrite",
                "--no-progress", "--no-explain", "--bootstrap", "200"], log)
    return json.loads((out / "metrics.json").read_text())


def prototypes(parent: Path, labelled: Path, others: Path, out: Path) -> dict:
    """Nearest class mean in the parent's feature space (cosine), from the labelled cells."""
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    import numpy as np

    from wbcnet.models.checkpoint import load_model
    from wbcnet.data.cache import decode_images
    from wbcnet.cells.preprocess import from_meta
    from wbcnet.data.scan import scan
    from wbcnet.inference.runner import predict_logits
    from wbcnet.evaluation.metrics import compute_metrics

    t0 = time.time()
    model, meta = load_model(parent)
    feats = {}
    for name, folder in (("labelled", labelled), ("others", others)):
        found = scan(str(folder), meta.classes)
        paths = [s.path for s in found.samples]
        dec = decode_images(paths, from_meta(meta), progress=False)
        _, f = predict_logits(model, dec.images, meta.mean, meta.std, with_features=True)
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        feats[name] = (f, np.array([found.samples[i].label for i in dec.index]))
    f_lab, y_lab = feats["labelled"]
    centres = np.stack([f_lab[y_lab == c].mean(0) if (y_lab == c).any() else np.zeros(f_lab.shape[1])
                        for c in range(len(meta.classes))])
    f_rest, y_rest = feats["others"]
    pred = (f_rest @ centres.T).argmax(1)
    m = compute_metrics(y_rest, pred, meta.classes)
    from wbcnet.evaluation.analysis import top_confusions

    m = {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "seconds": time.time() - t0,
         "top_confusions": top_confusions(m["confusion_matrix"], meta.classes)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(m))
    return m


def adapt(parent: Path, labelled: Path, others: Path | None, out: Path, log: Path) -> float:
    """Adapt into `out` unless done before; returns the seconds it took (read back when kept)."""
    stamp = out / "seconds.txt"
    if stamp.exists():
        return float(stamp.read_text())
    if out.exists():  # cut short before: start again
        import shutil
        shutil.rmtree(out)
    cmd = ["adapt", "--checkpoint", str(parent), "--data", str(labelled), "--out", str(out), "--no-progress"]
    if others is not None:
        cmd += ["--unlabelled", str(others), "--unlabelled-kind", "cells"]
    s = wbcnet(cmd, log)
    stamp.write_text(f"{s:.1f}")
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.adapt_lab", description=__doc__.splitlines()[0])
    ap.add_argument("--lolo", type=Path, default=Path("runs/lolo"), help="benchmarks.lolo's output (its no-LAB runs "
                    "and standins/)")
    ap.add_argument("--out", type=Path, default=Path("runs/adapt-lab"))
    ap.add_argument("--only", help="comma-separated settings LAB/KIND, e.g. pbc/clean,bccd/clean")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--before", type=Path, metavar="CHECKPOINT",
                    help="also adapt this parent (e.g. the model shipped before, which never saw BCCD) on the "
                    "settings of LAB given with --before-lab, for a before/after row")
    ap.add_argument("--before-lab", default="bccd")
    ap.add_argument("--copy-to", type=Path)
    a = ap.parse_args(argv)
    settings = [s for s in SETTINGS if not a.only or f"{s[0]}/{s[1]}" in a.only.split(",")]
    rows = []
    runs = [(lab, kind, a.lolo / f"no-{lab}", "") for lab, kind in settings]
    if a.before:
        runs += [(lab, kind, a.before, "before") for lab, kind in settings if lab == a.before_lab]
    for lab, kind, parent, tag in runs:
        folder = a.lolo / "standins" / lab / standins.slug(kind)
        if not has_checkpoint(parent) or not (folder / "DONE").exists():
            print(f"{lab}/{kind}: skipped ({parent} or {folder} is missing: run benchmarks.lolo first)", flush=True)
            continue
        here = a.out / lab / (standins.slug(kind) + (f"-{tag}" if tag else ""))
        here.mkdir(parents=True, exist_ok=True)
        log = here / "log.txt"
        labelled, others = split_cells(folder, here / "cells", a.seed)
        n_lab = sum(1 for _ in labelled.rglob("*.*"))
        row = {"lab": lab, "kind": kind, "parent": str(parent) if tag else parent.name, "labelled": n_lab,
               "others": sum(1 for _ in others.rglob("*.*"))}
        for method in METHODS:
            print(f"{lab}/{kind}: {method}", flush=True)
            if method == "prototypes":
                m = prototypes(parent, labelled, others, here / "eval" / "prototypes")
                row[method] = {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "seconds": m["seconds"],
                               "top": confusions(m, 2)}
                print(f"  macro-F1 {m['macro_f1']:.3f}", flush=True)
                continue
            if method == "none":
                ckpt, secs = parent, 0.0
            else:
                run = here / method.replace(" + ", "-")
                secs = adapt(parent, labelled, others if "unlabelled" in method else None, run, log)
                ckpt = run
            m = score(ckpt, others, here / "eval" / method.replace(" + ", "-"), log)
            row[method] = {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "seconds": secs, "top": confusions(m, 2)}
            print(f"  macro-F1 {m['macro_f1']:.3f} ({secs:.0f} s)", flush=True)
        rows.append(row)
        write(rows, a)
    return 0


def write(rows: list[dict], a) -> None:
    commit = git_commit() or "unknown"
    lines = ["# Adapting to a lab on day one (issue 28)", "", "```bash",
             f"python -m benchmarks.adapt_lab --lolo {a.lolo} --out {a.out}" +
             (f" --only '{a.only}'" if a.only else "") + (f" --before {a.before}" if a.before else ""), "```", "",
             f"- Commit `{commit}`, seed {a.seed}, {os.cpu_count()}-CPU machine, CPU only. Parents: `benchmarks.lolo`'s "
             "`no-LAB` runs, which never saw LAB.",
             f"- Per setting: {LABELS_PER_CLASS} labelled cells a class (fewer where the lab has fewer: one is kept to "
             f"score), up to {UNLABELLED} other cells given unlabelled and then scored (macro-F1, accuracy).",
             "- Kinds other than `clean` are the lab's stand-ins (benchmarks/standins.py; PIL/scipy, not the "
             "training augmentation). Nothing here was chosen on them.",
             "- Time: wall seconds of `wbcnet adapt` on this machine (reading the cells included).", "",
             "| lab | pictures | parent | labelled | scored | " + " | ".join(f"{m} macro-F1 (acc)" for m in METHODS) +
             " | adapt s (labels / + unlabelled) | top mistakes after |",
             "|---|---|---|---|---|" + "---|" * len(METHODS) + "---|---|"]
    for r in rows:
        cells = " | ".join(f"{r[m]['macro_f1']:.3f} ({r[m]['accuracy']:.3f})" for m in METHODS)
        lines.append(f"| {r['lab']} | {r['kind']} | `{r['parent']}` | {r['labelled']} | {r['others']} | {cells} | "
                     f"{r['labels']['seconds']:.0f} / {r['labels + unlabelled']['seconds']:.0f} | "
                     f"{r['labels + unlabelled']['top']} |")
    text = "\n".join(lines) + "\n"
    (a.out / "adapt_lab.md").write_text(text)
    if a.copy_to:
        a.copy_to.write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
