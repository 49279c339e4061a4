"""`wbcnet adapt`: fit a trained model to a lab's own cells, with a few labelled ones or none.

Labelled: `fit()` again, from the parent checkpoint instead of random weights, on 5-50 cells per
class, with a smaller budget. Everything is fine-tuned at a low learning rate with the parent's
augmentation (a few cells can't retrain the features, but they can move them): head-only tuning
left the parent's lab in the features, and full-rate tuning forgets it. The parent's input
normalisation, preprocessing and classes are kept; the temperature and the unfamiliar-image
statistics are refitted on held-out adaptation cells when each class has enough of them, else the
parent's temperature stays (and the run says so). The result is an ordinary checkpoint.

Unlabelled (`--unlabelled DIR`): a BatchNorm model's normalisation statistics are re-estimated on
the new lab's images (AdaBN, Li et al. 2016). A GroupNorm model has none to re-estimate.

`--shots 5,10,25` answers "how many cells should we label?": k random cells per class adapt the
model, the rest of the lab's cells measure it, repeated with other draws.
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .config import TrainConfig
from .errors import WbcnetError
from .files import atomic_write

# Enough held-out cells per class to fit a temperature and a threshold on.
MIN_HELD_OUT_PER_CLASS = 4
# The fewest labelled cells of a class adapt takes: the unfamiliar-image statistics need to see how
# the cells of a class differ from each other, which one cell can't show.
MIN_CELLS_PER_CLASS = 2
# The fewest labelled cells in all: one training batch.
MIN_CELLS = 4


def adapt_config(parent_path, data, out, epochs: int = 12, lr: float = 3e-4, batch_size: int = 32,
                 seed: int = 0, progress: bool = True, val_frac: float | None = None, device: str = "cpu",
                 threads: int | None = None, workers: int | None = None) -> TrainConfig:
    """The TrainConfig of an adaptation run: the parent's model and recipe, a small budget. Too few
    cells to adapt on are refused here, before a run folder exists."""
    _, parent = ckpt.read_checkpoint(parent_path)
    try:
        base = TrainConfig.from_dict(parent.config, f"{parent.path} config")
    except (WbcnetError, TypeError):  # no config, or one of an older wbcnet: the defaults' recipe
        base = TrainConfig()
    from .data.preprocess import from_meta
    from .data.scan import scan

    prep = from_meta(parent)  # the parent's crop and stain, with the defaults older checkpoints left out
    found = scan(data, parent.classes)  # folders (or labels) of other classes land in unknown_folders
    counts = found.counts()
    extra = [Path(u).name for u in found.unknown_folders]
    if extra:
        raise WbcnetError(f"{data}: class(es) {', '.join(extra)} are not the model's ({', '.join(parent.classes)}); "
                          f"adapt keeps the model's classes")
    check_cell_counts(data, counts)
    smallest = min((n for n in counts.values() if n), default=0)
    if val_frac is None:  # hold cells out only where every class keeps enough to learn from
        val_frac = 0.2 if smallest * 0.2 >= MIN_HELD_OUT_PER_CLASS else 0.0
    return TrainConfig(
        data=str(data), out=str(out), classes=list(parent.classes), model=parent.model,
        model_args=dict(parent.model_args), init_from=str(parent.path), img_size=parent.img_size,
        crop=prep.crop, crop_context=prep.context, stain=prep.stain,
        epochs=epochs, batch_size=min(batch_size, max(4, sum(counts.values()) // 4)), lr=lr,
        weight_decay=base.weight_decay, warmup_epochs=1, label_smoothing=base.label_smoothing, balance="sampler",
        ema_decay=0.0, patience=0, merge_near_duplicates=False, val_frac=val_frac, test_frac=0.0, seed=seed,
        cache_dir=None, augment=base.augment, progress=progress, group_by="none", device=device, threads=threads,
        workers=workers)


def check_cell_counts(data, counts: dict[str, int]) -> None:
    """Refuse labelled cells too few to adapt on, saying which and how many more to label."""
    few = [f"{c} ({n})" for c, n in counts.items() if 0 < n < MIN_CELLS_PER_CLASS]
    if few:
        raise WbcnetError(f"{data}: too few labelled cells of {', '.join(few)}; adapt needs at least "
                          f"{MIN_CELLS_PER_CLASS} of each class it is given (label more, or leave the class out)")
    total = sum(counts.values())
    if total < MIN_CELLS:
        raise WbcnetError(f"{data}: {total} labelled cell{'s' * (total != 1)}; adapt needs at least {MIN_CELLS} "
                          f"(label more cells)")


def adapt(parent_path, data, out, **kw) -> Path:
    from .train import fit

    cfg = adapt_config(parent_path, data, out, **kw)
    print(f"adapting {cfg.init_from} on {data}: {cfg.epochs} epochs at lr {cfg.lr:g}, "
          + ("20% of the cells held out for the temperature and threshold" if cfg.val_frac else
             "too few cells to hold any out"))
    return fit(cfg)


def adapt_unlabelled(parent_path, images_dir, out, batch_size: int = 64, progress: bool = True) -> Path:
    """AdaBN: BatchNorm statistics re-estimated on a lab's unlabelled images."""
    import torch

    from .data.cache import decode_images
    from .data.preprocess import from_meta
    from .data.augment import normalize, to_float
    from .predict import expand_inputs

    model, meta = ckpt.load_model(parent_path)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise WbcnetError(f"{meta.path}: this model has no BatchNorm statistics to re-estimate (its "
                          f"normalisation is per image already); label a few cells and run wbcnet adapt --data")
    paths, _ = expand_inputs([str(images_dir)])
    decoded = decode_images(paths, from_meta(meta), desc="decoding", progress=progress)
    if len(decoded.images) < 2 * batch_size:
        raise WbcnetError(f"{images_dir}: {len(decoded.images)} readable images; at least {2 * batch_size} are "
                          f"needed to re-estimate normalisation statistics")
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
    model.train()
    with torch.no_grad():
        for i in range(0, len(decoded.images) - batch_size + 1, batch_size):
            model(normalize(to_float(torch.from_numpy(np.array(decoded.images[i:i + batch_size]))), meta.mean, meta.std))
    model.eval()
    meta.adapted_from = {"checkpoint": str(meta.path), "weights_sha256": meta.weights_sha256, "method": "adabn",
                         "unlabelled_images": int(len(decoded.images)), "folder": str(images_dir)}
    meta.shift_stats, meta.shift = None, None  # the parent's statistics describe other features now
    Path(out).mkdir(parents=True, exist_ok=True)
    ckpt.save_checkpoint(Path(out) / "best", model, meta)
    print(f"re-estimated {len(norms)} BatchNorm layers on {len(decoded.images)} images -> {Path(out) / 'best'}")
    return Path(out)


def shots_curve(parent_path, data, out, shots: list[int], repeats: int, seed: int = 0, epochs: int = 12,
                progress: bool = False, **train_kw) -> list[dict]:
    """k cells per class adapt the parent, the rest of `data` measure it; learning curve files.
    `train_kw` (device, threads, workers) go to each adaptation run; its evaluation runs there too."""
    from .checkpoint import load_model
    from .inference import resolve_device
    from .data.cache import decode_images
    from .data.preprocess import from_meta
    from .data.scan import scan
    from .evaluate import evaluate_samples

    out = Path(out)
    _, parent = ckpt.read_checkpoint(parent_path)
    found = scan(data, parent.classes)
    # Every cell decoded once; each draw's test cells are rows of this array.
    decoded = decode_images([s.path for s in found.samples], from_meta(parent), desc="decoding", progress=progress)
    samples = [found.samples[i] for i in decoded.index]
    row_of = {s.path: i for i, s in enumerate(samples)}
    by_class = {c: [s for s in samples if s.label == c] for c in range(len(parent.classes))}
    present = [c for c, v in by_class.items() if v]
    rows = []
    device = resolve_device(train_kw.get("device") or "cpu")
    model, meta = load_model(parent_path)
    model.to(device)
    base = evaluate_samples(model, meta, samples, out / "k0", title="unadapted", progress=progress,
                            explain_maps=False, n_resamples=0, images=decoded.images)
    rows.append({"shots": 0, "repeat": 0, "n_adapt": 0, "n_test": base["n"], "macro_f1": base["macro_f1"],
                 "accuracy": base["accuracy"]})
    print(f"k=0 (unadapted): macro-F1 {base['macro_f1']:.4f} on {base['n']} cells", flush=True)
    for k in shots:
        usable = [c for c in present if len(by_class[c]) > k]  # a class needs cells left to test on
        for r in range(repeats):
            rng = np.random.default_rng(seed * 1000 + k * 17 + r)
            chosen = {c: set(rng.choice(len(by_class[c]), k, replace=False).tolist()) for c in usable}
            adapt_set = [s for c in usable for i, s in enumerate(by_class[c]) if i in chosen[c]]
            test_set = [s for c in present for i, s in enumerate(by_class[c]) if i not in chosen.get(c, ())]
            work = out / f"k{k}_r{r}"
            manifest = work / "adapt.csv"
            manifest.parent.mkdir(parents=True, exist_ok=True)
            with open(manifest, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "label"])
                w.writerows([(str(Path(s.path).resolve()), parent.classes[s.label]) for s in adapt_set])
            run = adapt(parent_path, manifest, work / "run", epochs=epochs, seed=r, progress=progress, val_frac=0.0,
                        **train_kw)
            model, meta = load_model(run)
            model.to(device)
            res = evaluate_samples(model, meta, test_set, work / "eval", title=f"k={k}", progress=progress,
                                   explain_maps=False, n_resamples=0,
                                   images=decoded.images[[row_of[s.path] for s in test_set]])
            rows.append({"shots": k, "repeat": r, "n_adapt": len(adapt_set), "n_test": res["n"],
                         "macro_f1": res["macro_f1"], "accuracy": res["accuracy"]})
            print(f"k={k} repeat {r}: macro-F1 {res['macro_f1']:.4f} on {res['n']} cells", flush=True)
            shutil.rmtree(work / "run" / "test", ignore_errors=True)
    write_curve(rows, out, parent, data)
    return rows


def write_curve(rows: list[dict], out: Path, parent, data) -> None:
    from .plots import pyplot

    with atomic_write(out / "learning_curve.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ks = sorted({r["shots"] for r in rows})
    stats = [(k, np.mean([r["macro_f1"] for r in rows if r["shots"] == k]),
              np.std([r["macro_f1"] for r in rows if r["shots"] == k]),
              sum(r["shots"] == k for r in rows)) for k in ks]
    md = [f"Adapting `{parent.path}` to `{data}`: k labelled cells per class, the rest of the cells scored.",
          "", "| cells per class | macro-F1 mean | sd | repeats |", "|---|---|---|---|"]
    md += [f"| {k} | {m:.4f} | {sd:.4f} | {n} |" for k, m, sd, n in stats]
    with atomic_write(out / "learning_curve.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar([s[0] for s in stats], [s[1] for s in stats], yerr=[s[2] for s in stats], marker="o", capsize=4)
    ax.set_xlabel("labelled cells per class (0: the model as it came)")
    ax.set_ylabel("macro-F1 on the lab's other cells")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title("How many cells should we label?")
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=120)
    plt.close(fig)
    (out / "learning_curve.json").write_text(json.dumps({"parent": str(parent.path), "data": str(data),
                                                          "rows": rows}, indent=2))
    print("\n".join(md), file=sys.stdout)
