"""`wbcnet adapt --shots 5,10,25`: how many cells should a lab label?

k random cells per class of half of the lab's labelled cells (by field of view) adapt the model
(lab/adapt.py's `adapt_lab`), the other half scores it, repeated with other draws; the result is
the lab's learning curve (learning_curve.csv, .md, .json, .png). `--pick` and `--shots-unlabelled`
measure other ways of choosing the cells and adding the unlabelled ones (benchmarks/adapt_curve.py
draws several such curves on one figure).
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from ..core.errors import WbcnetError
from ..core.files import atomic_write
from ..models import checkpoint as ckpt
from ..training.config import TrainConfig
from .adapt import MIN_CELLS_PER_CLASS, adapt_lab


# random: k per class, drawn knowing the labels (what a curve has always meant); any: k x classes
# cells at random, blind to the labels, as a lab without --suggest would pick; suggested: lab.pick_cells.
PICKS = ("random", "any", "suggested")


def shots_curve(parent_path, data, out, shots: list[int], repeats: int, seed: int = 0, epochs: int = 12,
                progress: bool = False, unlabelled: bool = False, pick: str = "random", budget: str = "normal",
                semi: dict | None = None, **train_kw) -> list[dict]:
    """How many cells should a lab label? The lab's cells (`data`, labelled) are split per draw,
    by field of view, into a pool and a test half. k cells per class of the pool are labelled
    (`pick` random: drawn per class; suggested: the k x classes cells lab.pick_cells chooses, the
    way a person would be shown them), the parent is adapted on them (and, with `unlabelled`, on
    every pool cell without its label), and the test half scores it. k = 0: the parent as it
    came, or, with `unlabelled`, adapted on the unlabelled pool alone. Writes learning_curve.*."""
    from ..cells.preprocess import from_meta
    from ..data.cache import cached_decode
    from ..data.scan import scan
    from ..data.sources import regroup
    from ..evaluation.metrics import macro_f1
    from ..inference.lab_cells import LabCells
    from ..models.checkpoint import load_model
    from .suggest import lab_predictions, pick_cells

    if pick not in PICKS:
        raise WbcnetError(f"--pick {pick}: not one of {', '.join(PICKS)}")
    out = Path(out)
    _, parent = ckpt.read_checkpoint(parent_path)
    found = scan(data, parent.classes)
    # Every cell decoded once (and kept in train's decode cache, so the next curve on this lab
    # starts at once); each draw's cells are rows of this array.
    decoded = cached_decode([s.path for s in found.samples], from_meta(parent), TrainConfig.cache_dir,
                            desc="decoding", progress=progress)
    # Fields of view as train finds them: PBC's names carry none (CLASS_N would make one group per
    # class and put whole classes on one side), so there every cell is its own group.
    samples, grouping = regroup([found.samples[i] for i in decoded.index], "auto", str(data))
    print(f"{data}: {grouping}")
    y = np.array([s.label for s in samples])
    groups = np.array([s.group for s in samples])
    model, meta = load_model(parent_path)
    probs, features = lab_predictions(model, meta, decoded.images)
    rows = []

    def score(tag, k, r, n_labelled, n_unlabelled, checkpoint_or_probs, test):
        if isinstance(checkpoint_or_probs, np.ndarray):
            pred = checkpoint_or_probs[test].argmax(1)
        else:
            m, mt = load_model(checkpoint_or_probs)
            pred = lab_predictions(m, mt, decoded.images[test])[0].argmax(1)
        row = {"shots": k, "repeat": r, "pick": tag, "unlabelled": n_unlabelled, "n_adapt": n_labelled,
               "n_test": int(len(test)), "macro_f1": round(macro_f1(y[test], pred), 5),
               "accuracy": round(float((pred == y[test]).mean()), 5)}
        rows.append(row)
        print(f"k={k} repeat {r} ({tag}{', +%d unlabelled' % n_unlabelled if n_unlabelled else ''}): "
              f"macro-F1 {row['macro_f1']:.4f}, accuracy {row['accuracy']:.4f} on {len(test)} cells", flush=True)

    for r in range(repeats):
        rng = np.random.default_rng(seed * 1000 + r)
        names = np.unique(groups)
        in_pool = set(rng.permutation(names)[: len(names) // 2].tolist())  # whole fields on one side
        pool = np.flatnonzero([g in in_pool for g in groups])
        test = np.flatnonzero([g not in in_pool for g in groups])
        pool_cells = LabCells(decoded.images[pool], [samples[i].path for i in pool], [None] * len(pool))
        work = out / f"r{r}"
        if not unlabelled or pick == "suggested":  # adaptation without labels is the random curve's k = 0
            score("parent", 0, r, 0, 0, probs, test)
        else:
            run = adapt_lab(parent_path, work / "k0", unlabelled=pool_cells, budget=budget, seed=r, progress=progress,
                            semi=semi, unsupervised=True,
                            **train_kw)
            score("unlabelled only", 0, r, 0, len(pool), run, test)
        for k in shots:
            if pick == "random":
                # A class the pool holds too few of to label is left out, as a lab would.
                chosen = np.concatenate([rng.choice(pool[y[pool] == c], min(k, int((y[pool] == c).sum())), replace=False)
                                         for c in np.unique(y[pool]) if (y[pool] == c).sum() >= MIN_CELLS_PER_CLASS])
            elif pick == "any":
                chosen = rng.choice(pool, min(len(pool), k * len(parent.classes)), replace=False)
            else:  # what a person would be shown: no labels used to choose
                chosen = pool[[p.index for p in pick_cells(probs[pool], features[pool], k * len(parent.classes),
                                                           list(parent.classes), seed=r)]]
            manifest = work / f"k{k}" / "labelled.csv"
            manifest.parent.mkdir(parents=True, exist_ok=True)
            with open(manifest, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "label"])
                w.writerows([(str(Path(samples[i].path).resolve()), parent.classes[y[i]]) for i in chosen])
            run = adapt_lab(parent_path, work / f"k{k}" / "run", labelled=manifest,
                            unlabelled=pool_cells if unlabelled else None, budget=budget, seed=r, epochs=epochs,
                            progress=progress, semi=semi, **train_kw)
            score(pick, k, r, len(chosen), len(pool) if unlabelled else 0, run, test)
            shutil.rmtree(work / f"k{k}" / "run" / "test", ignore_errors=True)
    write_curve(rows, out, parent, data)
    return rows


def write_curve(rows: list[dict], out: Path, parent, data) -> None:
    from ..render.plots import pyplot

    with atomic_write(out / "learning_curve.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ks = sorted({r["shots"] for r in rows})
    stats = [(k, np.mean([r["macro_f1"] for r in rows if r["shots"] == k]),
              np.std([r["macro_f1"] for r in rows if r["shots"] == k]),
              sum(r["shots"] == k for r in rows)) for k in ks]
    picks = sorted({r["pick"] for r in rows if r["shots"]})
    with_unl = any(r["unlabelled"] for r in rows)
    md = [f"Adapting `{parent.path}` to `{data}`: k labelled cells per class ({', '.join(picks)}) from half of the "
          f"lab's fields" + (", every cell of that half also unlabelled" if with_unl else "")
          + "; the other half scored.",
          "", "| cells per class | macro-F1 mean | sd | repeats |", "|---|---|---|---|"]
    md += [f"| {k} | {m:.4f} | {sd:.4f} | {n} |" for k, m, sd, n in stats]
    with atomic_write(out / "learning_curve.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar([s[0] for s in stats], [s[1] for s in stats], yerr=[s[2] for s in stats], marker="o", capsize=4)
    ax.set_xlabel("labelled cells per class (0: " + ("unlabelled cells only)" if with_unl else "the model as it came)"))
    ax.set_ylabel("macro-F1 on the lab's other cells")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title("How many cells should we label?" + (" (with the unlabelled cells)" if with_unl else ""))
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=120)
    plt.close(fig)
    (out / "learning_curve.json").write_text(json.dumps({"parent": str(parent.path), "data": str(data),
                                                          "rows": rows}, indent=2))
    print("\n".join(md), file=sys.stdout)
