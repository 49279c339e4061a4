"""Training: fit() runs a whole job, train_one_epoch() one pass, train_step() one batch.

The parts a run trains with are built from its TrainConfig by training_parts() (build_model,
build_optimizer, build_loss, build_ema, build_schedule), and split_of() gives the split fit() would
make: the benchmarks call these rather than copying them. `__all__` is what other code may use.
The loop, schedule, optimizer, EMA, history and run folder are engine/'s (engine/trainer.py);
this file says what a batch is and what a step does. finish_run (calibration and the test
report) is evaluation/run.py's.

Every epoch draws its shuffling, augmentation and dropout from generators seeded with
(seed, epoch), and the learning rate is a pure function of the step, so a run resumed from its
last checkpoint continues exactly as if it had never stopped.

A run folder is never destroyed: a new run refuses a folder that holds a checkpoint, a resume
that cannot continue says why and changes nothing, and a run that fails before its first
checkpoint removes what it wrote, so the same command can simply be run again.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cells.preprocess import Preprocess
from ..core.errors import WbcnetError
from ..core.files import atomic_write, disk_full
from ..core.weights import sha256_file
from ..data.augment import augment_batch, normalize
from ..data.cache import cached_decode
from ..data.scan import Sample, scan
from ..data.stats import channel_stats
from ..data.sources import Source, parse_sources, regroup, source_name
from ..data.split import SPLITS, merge_linked_groups, read_split, split_by_source, write_split
from ..engine.distributed import Dist
from ..engine.ema import EMA
from ..engine.optim import make_optimizer
from ..engine.rundir import discard_unstarted, mark_done, new_run_dir, open_resume
from ..engine.schedule import Schedule
from ..engine.trainer import data_parallel, epoch_generators, restore, run_epoch, run_epochs, set_threads, start_from
from ..evaluation.metrics import macro_f1
from ..evaluation.run import finish_run
from ..inference.runner import predict_logits, resolve_device, use_bf16
from ..models import checkpoint as ckpt
from ..models import create_model, default_img_size, full_model_args
from ..models.backbone import BackboneMeta, backbone_files, check_fits, load_backbone, read_backbone
from .config import TrainConfig
from .distill import check_teacher, load_teacher, resize

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "epoch_s", "img_per_s"]
# What a run writes before its first checkpoint; a folder holding only these may be reused.
PRELIMINARY_FILES = {"config.yaml", "split.csv", "bad_files.csv"}
# What a run can be continued from.
RESUME_FILES = ("config.yaml", "split.csv", "last.safetensors", "last.json")


@dataclass
class RunData:
    """The decoded images of one split, aligned with its samples."""
    samples: list[Sample]
    images: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def source_ids(self) -> np.ndarray:
        names = sorted({s.source for s in self.samples})
        return np.array([names.index(s.source) for s in self.samples], dtype=np.int64)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def sampling_weights(labels: np.ndarray, sources: np.ndarray | None = None) -> torch.Tensor:
    """Per-image weights giving every class the same share of a batch, and within a class each
    source (lab) a share in proportion to the square root of its cells: a large lab cannot drown a
    small one, and a small one is not repeated past use. (Even shares gave BCCD's 245 training
    cells a third of every batch beside 14,000 others, its 2 basophils a third of all basophils.)"""
    sources = np.zeros_like(labels) if sources is None else sources
    cells = labels * (int(sources.max()) + 1) + sources
    per_cell = np.bincount(cells).astype(np.float64)
    root = np.sqrt(per_cell)
    n_classes = int(labels.max()) + 1
    class_root = np.bincount(np.arange(len(per_cell)) // (int(sources.max()) + 1), weights=root, minlength=n_classes)
    # an image's weight: its lab's share of the class (root / class_root) spread over that lab's cells
    share = root[cells] / class_root[labels]
    return torch.tensor(share / per_cell[cells], dtype=torch.float64)


def epoch_order(labels: np.ndarray, balance: str, g: torch.Generator, sources: np.ndarray | None = None) -> torch.Tensor:
    if balance == "sampler":
        return torch.multinomial(sampling_weights(labels, sources), len(labels), replacement=True, generator=g)
    return torch.randperm(len(labels), generator=g)


def train_step(model, criterion, optimizer, x: torch.Tensor, y: torch.Tensor, bf16: bool, teacher=None,
               teacher_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a normalised batch; returns (loss, logits). With a teacher
    (distill.Teacher) its logits for the same view join the labels in the loss."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    loss = criterion(logits.float(), y)
    if teacher is not None:
        loss = teacher.loss(logits.float(), teacher_logits, loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def train_one_epoch(model, criterion, optimizer, data: RunData, cfg: TrainConfig, epoch: int, step: int,
                    schedule: Schedule, mean, std, bf16: bool, channels_last: bool, ema=None,
                    d: Dist = Dist(), teacher=None):
    """One pass over `data` (this rank's shard of it, under torchrun), run by engine.trainer.run_epoch
    with train_step as its step and the run's `schedule` (training_parts'). Returns (mean loss,
    accuracy on augmented batches, over all ranks; next step)."""
    model.train()
    device = next(model.parameters()).device
    g, g_aug = epoch_generators(cfg.seed, epoch, device, d)
    labels = data.labels
    order = epoch_order(labels, cfg.balance, g, data.source_ids)
    # Drop the ragged last batch (BatchNorm dislikes size 1); every rank takes as many steps.
    n_batches = len(order) // d.world // cfg.batch_size
    if d.active:
        order = order[d.rank::d.world]  # one shared order, every world-th image of it to this rank

    def one_batch(b: int) -> dict:
        idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size].numpy())  # memory-mapped caches read faster in order
        x = torch.from_numpy(np.ascontiguousarray(data.images[idx])).to(device, non_blocking=True)
        y = torch.from_numpy(labels[idx]).to(device, non_blocking=True)
        x = augment_batch(x, cfg.augment, g_aug)
        # Distilling, the batch is at the teacher's size: it sees this view, the student the same one smaller.
        teacher_logits = teacher.logits(x, bf16) if teacher is not None else None
        if x.shape[-1] != cfg.img_size:
            x = resize(x, cfg.img_size)
        x = normalize(x, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, logits = train_step(model, criterion, optimizer, x, y, bf16, teacher, teacher_logits)
        return {"loss": loss.item() * len(y), "acc": (logits.argmax(1) == y).sum().item(), "n": len(y)}

    totals, step = run_epoch(one_batch, n_batches, optimizer, schedule, step, ema, getattr(model, "module", model), d,
                             f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress)
    return totals["loss"] / max(totals["n"], 1), totals["acc"] / max(totals["n"], 1), step


def validate(model, data: RunData, mean, std, bf16, batch_size) -> tuple[float, float, float]:
    logits = predict_logits(model, data.images, mean, std, batch_size, bf16)
    labels = data.labels
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    pred = logits.argmax(1)
    return loss, float((pred == labels).mean()), macro_f1(labels, pred)


def _report_scan(found, source) -> None:
    for path, reason in found.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for folder in found.unknown_folders:
        print(f"warning: {folder} is not one of the classes {found.classes}; ignored", file=sys.stderr)


def scan_sources(cfg: TrainConfig) -> tuple[list[str], list[Sample], list[Source]]:
    """Every source scanned, its samples tagged with its name and labelled in one class list:
    `cfg.classes`, or the class folders of all sources together (names matched ignoring case)."""
    sources = parse_sources(cfg.data)
    found = [(src, scan(src.path, cfg.classes, source=src.name)) for src in sources]
    classes = list(cfg.classes) if cfg.classes else []
    for _, f in found:
        for c in f.classes:
            if c.lower() not in {k.lower() for k in classes}:
                classes.append(c)
    if not cfg.classes:
        classes.sort(key=str.lower)
    index = {c.lower(): i for i, c in enumerate(classes)}
    samples = []
    for src, f in found:
        _report_scan(f, src.path)
        samples += [Sample(s.path, index[f.classes[s.label].lower()], s.group, s.source) for s in f.samples]
        if len(sources) > 1:
            counts = f.counts()
            print(f"source {src.name}: {len(f.samples)} images ({', '.join(f'{c} {n}' for c, n in counts.items())})")
            empty = [c for c, n in counts.items() if n == 0]
            if empty and cfg.classes:
                print(f"note: source {src.name} has no {', '.join(empty)}", file=sys.stderr)
    present = {s.label for s in samples}
    missing = [c for i, c in enumerate(classes) if i not in present]
    if missing and not (cfg.init_from and present):
        raise WbcnetError(f"{', '.join(s.path for s in sources)}: no images for class(es) {', '.join(missing)}")
    if missing:
        print(f"note: adapting on {len(present)} of {len(classes)} classes; {', '.join(missing)} keep(s) what the "
              f"parent model learnt", file=sys.stderr)
    return classes, samples, sources


def make_split(cfg: TrainConfig, samples: list[Sample], classes: list[str]) -> dict[str, list[Sample]]:
    grouped = []
    for name in sorted({s.source for s in samples}):
        mine, note = regroup([s for s in samples if s.source == name], cfg.group_by, name)
        print(note if note.startswith("warning") else f"source {name}: {note}",
              file=sys.stderr if note.startswith("warning") else sys.stdout)
        grouped += mine
    samples = grouped
    if cfg.merge_near_duplicates:
        from ..data.near_duplicates import near_duplicate_pairs

        links = near_duplicate_pairs([s.path for s in samples], cfg.workers, cfg.progress)
        samples = merge_linked_groups(samples, [(a, b) for a, b, _ in links])
        print(f"near-duplicates: {len(links)} pairs; their fields of view are kept on one side of the split")
    split = split_by_source(samples, 0.0 if cfg.val_data else cfg.val_frac, 0.0 if cfg.test_data else cfg.test_frac,
                            cfg.seed)
    for name, extra in (("val", cfg.val_data), ("test", cfg.test_data)):
        if extra:
            more = scan(extra, classes, source=source_name(extra))
            _report_scan(more, extra)
            split[name] = more.samples
    return split


def check_split(split: dict[str, list[Sample]], classes: list[str], source, allow_empty_val: bool = False) -> None:
    """Refuse splits that can't train or measure anything, with what to do about it."""
    # Adapting, a class may be absent from the data, and there may be no validation cells at all.
    needed = {s.label for v in split.values() for s in v} if allow_empty_val else set(range(len(classes)))
    for name in ("train", "val"):
        if not split[name] and name == "val" and allow_empty_val:
            continue
        have = {s.label for s in split[name]}
        empty = [classes[i] for i in sorted(needed - have)]
        if empty:
            raise WbcnetError(f"{source}: too few images (or fields of view) to split: the {name} split has no "
                              f"{', '.join(empty)}; add images, or give --val/--test sets")


def preprocess_of(cfg: TrainConfig) -> Preprocess:
    return Preprocess(size=cfg.img_size, crop=cfg.crop, context=cfg.crop_context, stain=cfg.stain)


def load_data(cfg: TrainConfig, run_dir: Path, resuming: bool = False, d: Dist = Dist(), train_size: int | None = None):
    """Scan, split (or read the run's split), decode once. Returns classes, RunData per split,
    and the sources. Under torchrun rank 0 splits and decodes first; the other ranks then read
    its split.csv and its decode cache. `train_size`: the training split's size, when it is not
    the model's (a teacher's, distilling)."""
    classes, samples, sources = scan_sources(cfg)
    where = ", ".join(s.path for s in sources)
    if len(classes) < 2:
        raise WbcnetError(f"{where}: only one class ({classes[0]}); a classifier needs at least two")
    split_csv = run_dir / "split.csv"
    if resuming or not d.main:
        if not resuming:
            d.barrier()  # rank 0 writes split.csv
        split = read_split(split_csv, classes)
    else:
        split = make_split(cfg, samples, classes)
        check_split(split, classes, where, allow_empty_val=bool(cfg.init_from))
        write_split(split_csv, split, classes)
        d.barrier()
    if not d.main:
        d.barrier()  # rank 0 fills the decode cache
    data, bad = {}, []
    # Each lab is decoded (and its cells found) once, all its splits together, under a key of that
    # lab's paths alone: runs that train on other mixes of the same labs (leave-one-lab-out) share
    # its cache, where a key per split made every mix find every cell again (about 6 minutes for
    # the three labs with the learned finder on this 2-core CPU).
    rows, images, found = {}, {}, {}
    preps = {name: preprocess_of(cfg) for name in SPLITS}
    if train_size:
        preps["train"] = dataclasses.replace(preps["train"], size=train_size)
    wanted: dict[tuple, set] = {}
    for name in SPLITS:
        for s in split[name]:
            wanted.setdefault((s.source, preps[name]), set()).add(s.path)
    for (source, prep), paths in wanted.items():
        paths = sorted(paths)
        decoded = cached_decode(paths, prep, cfg.cache_dir, cfg.workers, f"decoding {source}", cfg.progress)
        images[source, prep], found[source, prep] = decoded.images, decoded.found
        rows[source, prep] = {paths[i]: r for r, i in enumerate(decoded.index)}
        bad.extend(decoded.errors)
    for name in SPLITS:
        if not split[name]:
            data[name] = None
            continue
        kept = [s for s in split[name] if s.path in rows[s.source, preps[name]]]
        keys = sorted({(s.source, preps[name]) for s in kept}, key=str)
        take = {k: [rows[k][s.path] for s in kept if (s.source, preps[name]) == k] for k in keys}
        # samples regrouped source by source, in split order within each, to line up with the rows
        kept = [s for k in keys for s in kept if (s.source, preps[name]) == k]
        cell = np.concatenate([found[k][take[k]] for k in keys]) if keys else np.zeros(0, bool)
        if cfg.crop == "cell" and not cell.all():
            print(f"{name}: no cell found in {int((~cell).sum())} of {len(cell)} images; "
                  f"the whole picture is used for those")
        size = preps[name].size
        stack = np.concatenate([images[k][take[k]] for k in keys]) if keys else np.zeros((0, 3, size, size), np.uint8)
        data[name] = RunData(kept, stack)
    if d.main:
        d.barrier()
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if bad and not resuming and d.main:
        with atomic_write(run_dir / "bad_files.csv") as tmp, open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows([("path", "reason")] + bad)
    counts = np.bincount(data["train"].labels if data["train"] else [], minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty and not (cfg.init_from and data["train"]):
        raise WbcnetError(f"{where}: no usable training images for class(es) {', '.join(empty)}")
    return classes, data, sources


def fit(cfg: TrainConfig | None, resume: str | Path | None = None, on_epoch_end=None, evaluate: bool = True) -> Path:
    """Train as `cfg` says (or continue the run in `resume`); returns the run folder.
    `cfg` is not changed. `on_epoch_end(epoch, row)` is called after each epoch's checkpoint is
    on disk, with the epoch's metrics.csv row (tune reports to Optuna there; tests simulate an
    interrupt). `evaluate=False` skips the temperature, the unfamiliar-image statistics and the
    test and validation reports (tune's trials need only the best validation score).
    Under torchrun every rank calls fit() and rank 0 alone writes the run folder."""
    if resume:
        run_dir = open_resume(resume, RESUME_FILES)
        cfg = TrainConfig.from_yaml(run_dir / "config.yaml")
        d = Dist.from_env(cfg.device)
    else:
        if cfg is None or not cfg.data:
            raise WbcnetError("no training data: pass --data DIR (an ImageFolder) or a CSV manifest")
        cfg = cfg.copy().validate()
        cfg.img_size = cfg.img_size or default_img_size(cfg.model)
        pretrained_backbone(cfg)  # a backbone for another model or other inputs: refused before the run folder exists
        d = Dist.from_env(cfg.device)
        run_dir = Path(d.text_from_main(str(new_run_dir(cfg.out, cfg.model, PRELIMINARY_FILES)) if d.main else ""))
        cfg.out = str(run_dir)
    try:
        if d.main:
            return _fit(cfg, run_dir, bool(resume), on_epoch_end, d, evaluate)
        # The other ranks train as quietly as they can: rank 0 speaks for the run.
        cfg.progress = False
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return _fit(cfg, run_dir, bool(resume), on_epoch_end, d, evaluate)
    except BaseException as e:
        # A new run that fails before its first checkpoint leaves no half-made folder behind.
        removed = d.main and not resume and discard_unstarted(run_dir, "last.safetensors", PRELIMINARY_FILES)
        if disk_full(e):
            then = ("the run folder was removed; free some space and run the same command again" if removed else
                    f"free some space and continue with: wbcnet train --resume {run_dir}"
                    if (run_dir / "last.safetensors").exists() else
                    f"{run_dir} holds no checkpoint yet: free some space, remove it and run again")
            raise WbcnetError(f"{e.filename or run_dir}: no space left on the device; {then}") from None
        raise
    finally:
        d.close()


# --- the parts of training, built from a TrainConfig: fit() and the benchmarks build them here ------

def given_model_args(cfg: TrainConfig) -> dict:
    """The model's arguments as the config gives them, img_size included."""
    model_args = dict(cfg.model_args)
    model_args.setdefault("img_size", cfg.img_size)
    return model_args


def model_args_of(cfg: TrainConfig) -> dict:
    """Every constructor argument of the run's model, img_size included, as its checkpoint records them."""
    return full_model_args(cfg.model, given_model_args(cfg))


def pretrained_backbone(cfg: TrainConfig) -> tuple[dict, BackboneMeta] | None:
    """cfg.pretrained's backbone (a `wbcnet pretrain` folder), checked against this run's model and
    inputs; None when cfg.pretrained is not one (nothing, or a plain .safetensors file)."""
    if not cfg.pretrained or backbone_files(cfg.pretrained) is None:
        return None
    tensors, meta = read_backbone(cfg.pretrained)
    check_fits(meta, cfg.model, model_args_of(cfg), cfg.img_size or default_img_size(cfg.model),
               preprocess_of(cfg).to_dict(), cfg.pretrained)
    return tensors, meta


def build_model(cfg: TrainConfig, num_classes: int, load_pretrained: bool = True) -> torch.nn.Module:
    """The model a run of `cfg` starts from: seeded with cfg.seed, then cfg.pretrained's weights: a
    `wbcnet pretrain` backbone (every layer but the classifier, strictly), or a plain .safetensors
    file (the layers whose shapes match). `load_pretrained=False`: a resumed run's, whose weights
    come from its own checkpoint."""
    backbone = pretrained_backbone(cfg) if load_pretrained else None
    plain = cfg.pretrained if load_pretrained and backbone is None else None
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=num_classes, pretrained=plain, **given_model_args(cfg))
    if backbone is not None:
        load_backbone(model, backbone[0], cfg.pretrained)
    return model


def pretrained_record(path, backbone: BackboneMeta | None) -> dict:
    """What a checkpoint says of the weights its run started from."""
    if backbone is None:
        weights = Path(path)
        return {"path": str(weights.resolve()), "weights_sha256": sha256_file(weights)}
    return {"path": str(Path(path).resolve()), "weights_sha256": backbone.weights_sha256, "method": backbone.method,
            "cells": backbone.cells, "sources": [{k: s[k] for k in ("name", "path", "cells")} for s in backbone.sources]}


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD with Nesterov momentum); weight decay on weights, not on biases and norms."""
    return make_optimizer([model], cfg.lr, cfg.weight_decay, cfg.optimizer)


def build_loss(cfg: TrainConfig, labels: np.ndarray, num_classes: int, device="cpu") -> torch.nn.Module:
    """Label-smoothed cross-entropy; with balance=weighted_loss each class weighted by its rarity in `labels`."""
    weight = class_weights(labels, num_classes) if cfg.balance == "weighted_loss" else None
    return torch.nn.CrossEntropyLoss(weight=weight.to(device) if weight is not None else None,
                                     label_smoothing=cfg.label_smoothing)


def build_ema(model, cfg: TrainConfig) -> EMA | None:
    return EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None


def build_schedule(cfg: TrainConfig, n_train: int, world: int = 1) -> Schedule:
    """The schedule of `n_train` training images in batches of cfg.batch_size on each of `world`
    processes (the ragged last batch dropped); refused if that is not one batch."""
    steps_per_epoch = n_train // world // cfg.batch_size
    if steps_per_epoch == 0:
        if cfg.init_from:  # wbcnet adapt chooses the batch size itself: the cure is more cells
            raise WbcnetError(f"{n_train} usable labelled cells is less than one batch of {cfg.batch_size}; "
                              f"label more cells")
        raise WbcnetError(f"{n_train} training images is less than one batch "
                          f"(--batch-size {cfg.batch_size}" + (f" on each of {world} processes" if world > 1 else "") +
                          "); lower the batch size or add images")
    return Schedule.of_epochs(steps_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.lr)


@dataclass
class TrainParts:
    """What a run trains with."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    criterion: torch.nn.Module
    ema: EMA | None
    schedule: Schedule


def training_parts(cfg: TrainConfig, num_classes: int, labels: np.ndarray, device="cpu", channels_last: bool = False,
                   world: int = 1, model: torch.nn.Module | None = None) -> TrainParts:
    """Model, optimizer, loss (class weights from `labels`, the training labels), EMA and schedule,
    as fit() builds them for `cfg`. `model`: one built already (fit's, with a parent's weights;
    a benchmark's); else build_model(cfg). The model is moved to `device` (and channels-last)."""
    model = build_model(cfg, num_classes) if model is None else model
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    ema = build_ema(model, cfg)
    criterion = build_loss(cfg, labels, num_classes, device)
    return TrainParts(model, optimizer, criterion, ema, build_schedule(cfg, len(labels), world))


def split_of(cfg: TrainConfig) -> tuple[list[str], dict[str, list[Sample]]]:
    """The classes, and the train/val/test samples fit() would split `cfg`'s data into; writes nothing."""
    classes, samples, _ = scan_sources(cfg)
    return classes, make_split(cfg, samples, classes)


def _fit(cfg: TrainConfig, run_dir: Path, resuming: bool, on_epoch_end, d: Dist, evaluate: bool = True) -> Path:
    if not resuming and d.main:
        cfg.to_yaml(run_dir / "config.yaml")
    set_threads(cfg.threads, d)
    device = resolve_device(d.device(cfg.device))
    bf16 = use_bf16(cfg.bf16, device)
    channels_last = bf16 if cfg.channels_last is None else cfg.channels_last
    print(f"run folder: {run_dir}  (model {cfg.model}, {cfg.img_size} px, {device}, bf16={bf16}, "
          f"channels_last={channels_last})")

    teacher = load_teacher(cfg.teacher, cfg.distill_weight, cfg.distill_temperature, device) if cfg.teacher else None
    classes, data, sources = load_data(cfg, run_dir, resuming, d, max(teacher.img_size, cfg.img_size) if teacher else None)
    train, val, test = data["train"], data["val"], data["test"]
    if teacher is not None:
        check_teacher(teacher, classes, preprocess_of(cfg).to_dict())
        print(f"distilling from {teacher.meta.path} ({teacher.meta.model}, {teacher.img_size} px): weight "
              f"{teacher.weight:g}, temperature {teacher.temperature:g}")
    print("images: " + ", ".join(f"{k} {len(v.samples) if v else 0}" for k, v in data.items()))

    model = build_model(cfg, len(classes), load_pretrained=not resuming)
    backbone = None if resuming else pretrained_backbone(cfg)
    # adapt: the parent's weights, and below its normalisation and temperature
    parent = start_from(model, cfg.init_from) if cfg.init_from else None
    parts = training_parts(cfg, len(classes), train.labels, device, channels_last, d.world, model)
    model, optimizer, criterion, ema, schedule = parts.model, parts.optimizer, parts.criterion, parts.ema, parts.schedule
    # A backbone learned its first layers on inputs normalised its way: the run keeps it.
    mean, std = (parent.mean, parent.std) if parent else \
        (backbone[1].mean, backbone[1].std) if backbone else channel_stats(train.images)
    meta = _run_meta(cfg, classes, data, sources, mean, std, parent, teacher, backbone, resuming)
    start_epoch, history, best_f1, since_best = 0, [], -1.0, 0
    last = run_dir / "last.safetensors"
    if resuming:
        tensors, saved = ckpt.read_checkpoint(last)
        if saved.classes != classes:
            raise WbcnetError(f"{cfg.data}: its classes {classes} are not the run's {saved.classes} "
                              f"(was a class folder added or removed?); cannot resume")
        restore(tensors, saved, last, model, optimizer, ema, device)
        state = saved.train_state
        start_epoch, best_f1, since_best = state["epoch"] + 1, state["best_f1"], state["since_best"]
        history = state["history"]
        meta.mean, meta.std = mean, std = saved.mean, saved.std
        for key in ("best_epoch", "val_macro_f1", "val_accuracy", "pretrained"):
            setattr(meta, key, getattr(saved, key))
        print(f"resuming after epoch {start_epoch} (best validation macro-F1 so far {best_f1:.4f})")

    train_model = data_parallel(model, device, d, cfg.batch_size)
    eval_model = ema.module if ema is not None else model
    step, scores = start_epoch * schedule.steps_per_epoch, None

    def train_epoch(epoch: int) -> dict:
        nonlocal step, scores
        t0 = time.time()
        train_loss, train_acc, step = train_one_epoch(train_model, criterion, optimizer, train, cfg, epoch, step,
                                                      schedule, mean, std, bf16, channels_last, ema, d, teacher)
        train_s = time.time() - t0
        # Rank 0 validates; every rank gets its scores, so all of them stop at the same epoch.
        scores = validate(eval_model, val, mean, std, bf16, 256) if val and d.main else (float("nan"),) * 3
        scores = [train_loss, *d.from_main(list(scores))]
        val_loss, val_acc, val_f1 = scores[1:]
        return {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
                "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5), "val_macro_f1": round(val_f1, 5),
                "lr": f"{optimizer.param_groups[0]['lr']:.3e}", "epoch_s": round(time.time() - t0, 1),
                "img_per_s": round(schedule.steps_per_epoch * cfg.batch_size * d.world / train_s, 1)}

    def end_epoch(epoch: int, row: dict) -> bool:
        """Early stopping's count, the best and the last checkpoint, the epoch's line; True: stop."""
        nonlocal best_f1, since_best
        train_loss, val_loss, val_acc, val_f1 = scores
        improved = val is None or val_f1 > best_f1
        best_f1, since_best = (val_f1, 0) if improved else (best_f1, since_best + 1)
        meta.train_state = {"epoch": epoch, "best_f1": best_f1, "since_best": since_best, "history": history}
        if improved:
            meta.best_epoch, meta.val_macro_f1, meta.val_accuracy = epoch + 1, val_f1, val_acc
            if d.main:
                ckpt.save_checkpoint(run_dir / "best", eval_model, dataclasses.replace(meta, train_state=None))
        if d.main:
            ckpt.save_checkpoint(last, model, meta, optimizer=optimizer, ema=ema)
        print(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {train_loss:.4f}  val loss {val_loss:.4f}  "
              f"val acc {val_acc:.4f}  val macro-F1 {val_f1:.4f}{'  *' if improved else ''}  "
              f"({row['epoch_s']}s, {row['img_per_s']} img/s)", flush=True)
        stopped = bool(cfg.patience) and since_best >= cfg.patience
        if stopped:
            print(f"early stop: no validation macro-F1 gain for {cfg.patience} epochs")
        return stopped

    run_epochs(start_epoch, cfg.epochs, train_epoch, end_epoch, history, run_dir / "metrics.csv", HISTORY_FIELDS, d,
               on_epoch_end, stopped=bool(cfg.patience and since_best >= cfg.patience))
    if d.main and evaluate:
        finish_run(run_dir, val, test, bf16, cfg.progress, at_size(train, cfg.img_size))
    elif d.main:
        mark_done(run_dir)
    return run_dir


def _run_meta(cfg: TrainConfig, classes, data: dict, sources, mean, std, parent, teacher, backbone,
              resuming: bool) -> ckpt.CheckpointMeta:
    """What the run's checkpoints say about it: its data, normalisation, parent, teacher, backbone."""
    trained_on = [{"name": src.name, "path": src.path,
                   "images": {k: sum(s.source == src.name for s in v.samples) if v else 0 for k, v in data.items()}}
                  for src in sources]
    meta = ckpt.new_meta(classes, cfg.model, given_model_args(cfg), cfg.img_size, mean, std, config=cfg.to_dict(),
                         seed=cfg.seed, sources=trained_on, preprocess=preprocess_of(cfg).to_dict())
    if parent:
        meta.temperature = parent.temperature  # kept unless held-out cells refit it (finish_run)
        meta.sources = parent.sources + trained_on
        meta.adapted_from = {"checkpoint": str(parent.path), "weights_sha256": parent.weights_sha256,
                             "sources": parent.sources, "images": {k: len(v.samples) if v else 0
                                                                    for k, v in data.items()},
                             "classes": sorted({classes[s.label] for s in data["train"].samples})}
    if teacher is not None:
        meta.distilled_from = teacher.record()
    if cfg.pretrained and not resuming:
        meta.pretrained = pretrained_record(cfg.pretrained, backbone[1] if backbone else None)
    return meta


def at_size(data: RunData | None, size: int) -> RunData | None:
    """`data` with its images at `size` (a distilled run's training cells, decoded at the teacher's
    size, for the statistics that describe the model at its own)."""
    if data is None or data.images.shape[-1] == size:
        return data
    out = np.empty((len(data.images), 3, size, size), dtype=np.uint8)
    for i in range(0, len(out), 512):
        x = torch.from_numpy(np.ascontiguousarray(data.images[i:i + 512])).float()
        out[i:i + 512] = resize(x, size).round_().clamp_(0, 255).to(torch.uint8).numpy()
    return RunData(data.samples, out)


__all__ = ["fit", "train_one_epoch", "train_step", "validate", "RunData", "training_parts", "TrainParts",
           "build_model", "model_args_of", "preprocess_of", "build_optimizer", "build_loss", "build_ema",
           "build_schedule", "split_of"]
