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

`--shots 5,10,25` answers "how many cells should we label?" (lab/learning_curve.py); the command's
flags are read in cli/adapt.py.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.errors import WbcnetError
from ..models import checkpoint as ckpt
from ..training.config import TrainConfig

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
    base = _train_config_of(parent)
    from ..cells.preprocess import from_meta
    from ..data.scan import scan

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
    from ..training.classifier import fit

    cfg = adapt_config(parent_path, data, out, **kw)
    print(f"adapting {cfg.init_from} on {data}: {cfg.epochs} epochs at lr {cfg.lr:g}, "
          + ("20% of the cells held out for the temperature and threshold" if cfg.val_frac else
             "too few cells to hold any out"))
    return fit(cfg)


# How long self-training runs. "tiny" is for tests and the page's demo on the bundled sample.
BUDGETS = {"tiny": dict(steps=4, unlabelled_batch=12, labelled_batch=10, warmup_steps=1),
           "normal": dict(steps=500), "long": dict(steps=1500)}
# Fewer unlabelled cells than this teach nothing a labelled few don't.
MIN_UNLABELLED = 8
# More are drawn at random from: 20,000 cells take ~2 min to read and are plenty for 500 steps.
MAX_UNLABELLED = 20_000
# The unfamiliar-image check is refitted to a lab from this many of its cells or more: its threshold
# (a 99th percentile) from fewer sat far below the lab's other cells (the page's ten-cell demo
# flagged every cell it then classified).
MIN_SHIFT_CELLS = 100
# Self-training on unlabelled cells alone made the model worse wherever it was measured (README,
# "Adapting to a lab"): the parent's mistakes on a new lab are confident, and it learns them.
UNSUPERVISED_REFUSED = ("unlabelled pictures alone made the model worse where it was measured (PBC macro-F1 0.41 -> "
                        "0.36); label a few of them too: wbcnet adapt --unlabelled DIR --suggest 25 --out TO_LABEL, "
                        "fill in TO_LABEL/suggest.csv, then give it with --data")
# Self-training sees each unlabelled cell at most this many times (strongly transformed each time).
MAX_PASSES = 20


def adapt_lab(parent_path, out, *, labelled=None, unlabelled=None, kind: str = "auto", budget: str = "normal",
              seed: int = 0, on_progress=None, progress: bool = False, epochs: int = 12, lr: float = 3e-4,
              device: str = "cpu", threads: int | None = None, workers: int | None = None,
              semi: dict | None = None, unsupervised: bool = False) -> Path:
    """Adapt the parent to a lab with its labelled cells (`labelled`: ImageFolder, CSV manifest or a
    filled suggestion sheet), its unlabelled pictures (`unlabelled`: cells or whole fields), or both
    (lab/semi.py). Writes an ordinary checkpoint at out/best. `semi`: SemiConfig fields over the budget's.
    Unlabelled cells alone are refused unless `unsupervised` (the --shots curve measures them)."""
    from .semi import SemiConfig

    if labelled is None and unlabelled is None:
        raise WbcnetError("adapt needs labelled cells (--data), unlabelled ones (--unlabelled), or both")
    if labelled is None and not unsupervised:
        raise WbcnetError(UNSUPERVISED_REFUSED)
    if budget not in BUDGETS:
        raise WbcnetError(f"budget {budget}: not one of {', '.join(BUDGETS)}")
    say = on_progress or (lambda frac, msg: None)
    if unlabelled is None:
        say(0.0, "adapting on the labelled cells")
        run = adapt(parent_path, labelled, out, epochs=epochs, lr=lr, seed=seed, progress=progress, device=device,
                    threads=threads, workers=workers)
        say(1.0, "done")
        return run
    import torch

    from ..cells.preprocess import from_meta
    from ..inference.count import lab_finder
    from ..inference.lab_cells import LabCells, read_lab_cells
    from ..models.checkpoint import load_model

    if threads:
        torch.set_num_threads(threads)
    _, parent = ckpt.read_checkpoint(parent_path)
    out = Path(out)
    if (out / "best.safetensors").exists():
        raise WbcnetError(f"{out}: holds a model already; pick a new --out")
    if isinstance(unlabelled, LabCells):  # read already (learning_curve.shots_curve)
        cells, unlabelled = unlabelled, f"{len(unlabelled)} cells given"
    else:
        say(0.0, "reading the lab's unlabelled cells")
        cells = read_lab_cells(unlabelled, from_meta(parent), kind, limit=MAX_UNLABELLED, seed=seed,
                               finder_weights=lab_finder(parent),
                               progress=progress, on_progress=lambda f, m: say(0.15 * f, m))
    print(f"unlabelled: {cells.summary()}")
    if len(cells) < MIN_UNLABELLED:
        raise WbcnetError(f"{unlabelled}: {len(cells)} white cells found; adapting on unlabelled cells needs at "
                          f"least {MIN_UNLABELLED}")
    images = labels = None
    start = parent.path
    if labelled is not None:
        images, labels = labelled_cells(parent.path, labelled)
        counts = np.bincount(labels, minlength=len(parent.classes))
        if len(labels) >= MIN_CELLS and counts[counts > 0].min() >= MIN_CELLS_PER_CLASS:
            # Enough to fine-tune on first: the teacher then starts from a model that knows the lab.
            say(0.15, "adapting on the labelled cells")
            start = adapt(parent_path, labelled, out, epochs=epochs, lr=lr, seed=seed, progress=progress,
                          device=device, threads=threads, workers=workers)
        else:  # a handful (the page's first labels): they join the self-training batches directly
            print(f"{len(labels)} labelled cells: too few to fine-tune on alone; they join self-training")
    model, meta = load_model(start)
    model.to(device)
    cfg = SemiConfig(**{**BUDGETS[budget], "lr": lr, "seed": seed, **(semi or {})})
    passes = cfg.steps * cfg.unlabelled_batch / len(cells)
    if passes > MAX_PASSES:  # a few hundred cells: more steps only fit the teacher's mistakes harder
        cfg = replace(cfg, steps=max(1, int(MAX_PASSES * len(cells) / cfg.unlabelled_batch)))
        print(f"{len(cells)} unlabelled cells: {cfg.steps} self-training steps ({MAX_PASSES} passes over them)")
    base = _train_config_of(parent)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="self-training", unit="step", leave=False, dynamic_ncols=True)

    def on_step(st):
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{st.loss:.3f}", sure=f"{st.mask_rate:.2f}")
        if st.step % 5 == 0 or st.step == cfg.steps:
            say(0.25 + 0.7 * st.step / cfg.steps, f"self-training: step {st.step} of {cfg.steps}, "
                                                  f"teacher sure of {st.mask_rate:.0%} of the cells")

    from .semi import self_train

    say(0.25, "self-training on the lab's cells")
    teacher = self_train(model, meta.mean, meta.std, meta.temperature, cells.images, base.augment, cfg,
                         images, labels, on_step=on_step)
    if bar is not None:
        bar.close()
    meta.shift = None
    if len(cells) >= MIN_SHIFT_CELLS:
        say(0.95, "fitting the unfamiliar-image check to the lab")
        meta.shift_stats = lab_shift_stats(teacher, meta, cells.images, images, labels, seed)
    else:  # the parent's statistics describe other features now, and a few cells can't give new ones
        meta.shift_stats = None
        print(f"{len(cells)} unlabelled cells: too few to refit the unfamiliar-image check on (it needs "
              f"{MIN_SHIFT_CELLS}); the adapted model has none")
    meta.adapted_from = {**(meta.adapted_from or {"checkpoint": str(parent.path),
                                                   "weights_sha256": parent.weights_sha256,
                                                   "sources": parent.sources}),
                         "method": "fixmatch-mean-teacher" + ("" if labelled is not None else " (no labels)"),
                         "labelled": {"cells": 0 if labels is None else len(labels), "inputs": str(labelled)},
                         "unlabelled": {"cells": len(cells), "pictures": cells.n_pictures, "fields": cells.n_fields,
                                        "skipped": len(cells.errors), "inputs": str(unlabelled)},
                         "self_training": {k: getattr(cfg, k) for k in ("steps", "threshold", "diversity_weight",
                                                                        "unlabelled_weight", "lr", "seed")}}
    meta.sources = list(meta.sources) + [{"name": "unlabelled", "path": str(unlabelled),
                                          "images": {"unlabelled": len(cells)}}]
    meta.config, meta.train_state = dict(meta.config or parent.config or {}), None
    out.mkdir(parents=True, exist_ok=True)
    ckpt.save_checkpoint(out / "best", teacher, meta)
    # stage 1's files describe the model before self-training: last.* (to resume it) would mislead.
    for stale in ("last.safetensors", "last.json"):
        (out / stale).unlink(missing_ok=True)
    say(1.0, "done")
    print(f"self-trained {cfg.steps} steps on {len(cells)} unlabelled cells"
          + (f" and {len(labels)} labelled" if labels is not None else "") + f" -> {out / 'best'}")
    return out


def _train_config_of(parent) -> TrainConfig:
    """The parent's training recipe (its augmentation, weight decay, ...)."""
    try:
        return TrainConfig.from_dict(parent.config, f"{parent.path} config")
    except (WbcnetError, TypeError):  # no config, or one of an older wbcnet: the defaults' recipe
        return TrainConfig()


def labelled_cells(checkpoint, data) -> tuple[np.ndarray, np.ndarray]:
    """The labelled cells of `data` as the checkpoint's inputs, and their class indices."""
    from ..cells.preprocess import from_meta
    from ..data.cache import decode_images
    from ..data.scan import scan

    _, meta = ckpt.read_checkpoint(checkpoint)
    found = scan(data, meta.classes)
    if found.unknown_folders:
        raise WbcnetError(f"{data}: class(es) {', '.join(Path(u).name for u in found.unknown_folders)} are not the "
                          f"model's ({', '.join(meta.classes)})")
    if not found.samples:
        raise WbcnetError(f"{data}: no labelled cells")
    decoded = decode_images([s.path for s in found.samples], from_meta(meta), progress=False)
    return decoded.images, np.array([found.samples[i].label for i in decoded.index])


def lab_shift_stats(model, meta, lab_images, images=None, labels=None, seed: int = 0):
    """The unfamiliar-image check refitted to the lab: class means from its labelled cells and
    its unlabelled cells under their predicted classes (every other one), the threshold from the
    other half: so the lab's own cells are familiar, and a cell unlike them is not."""
    from ..inference.runner import predict_logits
    from ..models.shift import fit_shift

    logits, feats = predict_logits(model, lab_images, meta.mean, meta.std, 256, with_features=True)
    order = np.random.default_rng(seed).permutation(len(feats))
    fit_rows, threshold_rows = order[::2], order[1::2]
    f, y = feats[fit_rows], logits[fit_rows].argmax(1)
    if images is not None and len(images):
        _, lf = predict_logits(model, images, meta.mean, meta.std, 256, with_features=True)
        f, y = np.concatenate([lf, f]), np.concatenate([labels, y])
    return fit_shift(f, y, feats[threshold_rows])


def adapt_unlabelled(parent_path, images_dir, out, batch_size: int = 64, progress: bool = True) -> Path:
    """AdaBN: BatchNorm statistics re-estimated on a lab's unlabelled images."""
    import torch

    from ..cells.preprocess import from_meta
    from ..data.augment import normalize, to_float
    from ..data.cache import decode_images
    from ..inference.predict import expand_inputs

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
