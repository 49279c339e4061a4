"""`wbcnet pretrain`: self-supervised pretraining of the classifier's backbone on every cell we have.

    wbcnet pretrain --config configs/multilab.yaml --data raabin=DIR --data pbc=DIR --unlabelled bccd=FIELDS \
        --out runs/pretrain
    wbcnet train --config configs/multilab.yaml --pretrained runs/pretrain

Labels are never read: the labelled labs' folders are only a list of pictures, and whole fields
give their white cells through the finder (lab.read_lab_cells). Every cell is decoded with the
Preprocess that `wbcnet train` will use (the same size, cell crop, finder and stain; the target's
`--config`), so the backbone learns on exactly the inputs it will be fine-tuned on.

The method is SimCLR (Chen et al. 2020) with lightly's NT-Xent loss and projection head, in a plain
PyTorch loop. Why SimCLR rather than DINO, BYOL or MAE, here:
- one network, no momentum teacher: each step is one forward and backward pass of two views,
  where BYOL and DINO add a teacher's forward (and DINO its multi-crop views), on a 2-core CPU;
- no collapse to guard: the negatives in the batch keep the features apart, where DINO needs its
  centring and sharpening tuned and BYOL its predictor, and both need long schedules to start;
- it is robust at the batch sizes a CPU affords (128 cells: 254 negatives per view), and its
  loss has a known chance level (log(2B - 1)), so the curve says whether anything was learned;
- MAE needs a ViT's patch tokens; mhcnn is convolutional up to S/16.
Its known cost: other cells of the same class are negatives too (most of a batch is neutrophils),
which a low temperature tolerates; a cell's two views must still be the closest pair.

The two views are the training augmentation made stronger (`STRONG`: warp, zoom-in, colour, HED
stain, blur, lower resolution, JPEG, grey), through data/augment.py's batched tensors: the
features should ignore exactly what differs between labs and stay with what makes a cell a cell.

The features are the classifier layer's input (models.classifier_layer); the head is never
trained and never saved. Every epoch draws its order, augmentation and dropout from generators
seeded with (seed, epoch), and OUT/last.* holds the weights, the projection head and the
optimizer after every epoch, so a killed run continues (`--resume`) exactly where it stopped and
the same command gives the same backbone. At the end: OUT/backbone.safetensors and backbone.json
(models/backbone.py), OUT/history.csv and OUT/loss.png.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from .. import __version__
from ..core.errors import WbcnetError
from ..core.files import atomic_write, ensure_writable_dir, write_text_atomic
from ..core.weights import load_tensors, part, save_tensors, sha256_file
from ..data.augment import augment_batch, normalize
from ..data.stats import channel_stats
from ..engine.optim import make_optimizer
from ..engine.rundir import discard_unstarted
from ..engine.schedule import Schedule
from ..engine.trainer import epoch_generators, run_epoch, run_epochs, set_threads
from ..inference.runner import resolve_device, use_bf16
from ..models import classifier_layer
from ..models.backbone import BackboneMeta, write_backbone
from ..models.checkpoint import git_commit, optimizer_from_parts, optimizer_to_parts
from .pretrain_config import TARGET_FIELDS, PretrainConfig, config_from_args

# The model's class count while pretraining: its classifier is never trained or saved.
_UNUSED_CLASSES = 5
HISTORY_FIELDS = ["epoch", "loss", "lr", "epoch_s", "cells_per_s"]


# --- the cells ----------------------------------------------------------------------------------------

@dataclass
class CellPool:
    """Every cell as a model input, in parts (a labelled lab's decode cache stays memory-mapped)."""
    parts: list[np.ndarray]          # uint8 (n_i, 3, S, S)
    sources: list[dict]              # name, path, kind, cells, skipped

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The cells at sorted positions `idx` (a copy, writable)."""
        out, start = [], 0
        for p in self.parts:
            mine = idx[(idx >= start) & (idx < start + len(p))] - start
            if len(mine):
                out.append(np.asarray(p[mine]))
            start += len(p)
        return np.ascontiguousarray(np.concatenate(out))

    __getitem__ = take


def read_cells(cfg: PretrainConfig, prep) -> CellPool:
    """The labelled labs' pictures (decoded once, through the decode cache) and the unlabelled
    pictures' cells (a field's cells cut out by the finder); no label is read."""
    from ..data.cache import cached_decode
    from ..data.scan import scan
    from ..data.sources import parse_sources
    from ..inference.lab_cells import read_lab_cells

    labelled = parse_sources(cfg.data) if cfg.data else []
    unlabelled = parse_sources(cfg.unlabelled) if cfg.unlabelled else []
    names = [s.name for s in labelled + unlabelled]
    if len(set(names)) < len(names):
        raise WbcnetError(f"source names used twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))} "
                          f"(name each --data and --unlabelled differently: NAME=DIR)")
    parts, sources = [], []
    for src in labelled:
        paths = [s.path for s in scan(src.path, source=src.name).samples]
        if not paths:
            raise WbcnetError(f"{src.path}: no pictures here")
        decoded = cached_decode(paths, prep, cfg.cache_dir, cfg.workers, desc=f"decoding {src.name}",
                                progress=cfg.progress)
        parts.append(decoded.images)
        sources.append({"name": src.name, "path": src.path, "kind": "labelled (labels not used)",
                        "cells": len(decoded.images), "skipped": len(decoded.errors)})
    for src in unlabelled:
        found = read_lab_cells(src.path, prep, cfg.unlabelled_kind, seed=cfg.seed, progress=cfg.progress)
        if not len(found):
            raise WbcnetError(f"{src.path}: no white cells found in its pictures")
        parts.append(found.images)
        sources.append({"name": src.name, "path": src.path, "kind": "unlabelled", "cells": len(found),
                        "pictures": found.n_pictures, "fields": found.n_fields, "skipped": len(found.errors)})
    for s in sources:
        print(f"source {s['name']}: {s['cells']} cells ({s['kind']})" + (f", {s['skipped']} pictures skipped"
                                                                           if s["skipped"] else ""))
    return CellPool(parts, sources)


# --- the model ----------------------------------------------------------------------------------------

class Features(torch.nn.Module):
    """The model's feature vector: its classifier layer's input, caught on the way in (the
    classifier's own output is thrown away and it gets no gradient). In training mode the model's
    dropout before its classifier (mhcnn's 0.2) applies to it too: a little more noise between
    the two views, the same features the fine-tuned classifier will be trained on."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self._head = classifier_layer(model)

    def forward(self, x):
        seen = []
        hook = self._head.register_forward_pre_hook(lambda _, inp: seen.append(inp[0]))
        try:
            self.model(x)
        finally:
            hook.remove()
        return seen[0]


def two_views(x: torch.Tensor, augment, g: torch.Generator, mean, std, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> (2B, 3, S, S): every cell's first view, then every cell's second."""
    views = torch.cat([normalize(augment_batch(x, augment, g), mean, std),
                       normalize(augment_batch(x, augment, g), mean, std)])
    return views.contiguous(memory_format=torch.channels_last) if channels_last else views


def simclr_step(features: Features, head, criterion, optimizer, views: torch.Tensor, bf16: bool) -> float:
    """One optimisation step on two_views()' batch; returns the NT-Xent loss. Both views go through
    the model in one pass: one forward and one backward a step."""
    with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=bf16):
        z = head(features(views))
    z = z.float()
    half = len(z) // 2
    loss = criterion(z[:half], z[half:])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def projection_head(model: torch.nn.Module, cfg: PretrainConfig) -> torch.nn.Module:
    """SimCLR's MLP from the model's features to the space NT-Xent compares in (lightly's; thrown away after)."""
    from lightly.models.modules import SimCLRProjectionHead

    return SimCLRProjectionHead(classifier_layer(model).in_features, cfg.proj_hidden_dim, cfg.proj_dim)


def optimizer_for(modules, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on weights, not on biases and norms (engine/optim.py, as `wbcnet train`'s)."""
    return make_optimizer(modules, cfg.lr, cfg.weight_decay)


# --- the run ------------------------------------------------------------------------------------------

def _save_last(out: Path, model, head, optimizer, state: dict) -> None:
    """OUT/last.safetensors then last.json (its SHA-256 inside), each atomically: a kill loses at most an epoch."""
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"head.{k}": v for k, v in head.state_dict().items()}}
    opt_tensors, state["optimizer"] = optimizer_to_parts(optimizer)
    tensors.update(opt_tensors)
    with atomic_write(out / "last.safetensors") as tmp:
        save_tensors(tensors, tmp)
        state["weights_sha256"] = sha256_file(tmp)
    write_text_atomic(out / "last.json", json.dumps(state, indent=2))


def _read_last(out: Path, cfg: PretrainConfig) -> tuple[dict, dict]:
    info, weights = out / "last.json", out / "last.safetensors"
    if not info.is_file() or not weights.is_file():
        raise WbcnetError(f"{out}: nothing to resume (no last.json and last.safetensors: the run stopped before "
                          f"its first epoch ended); start it again without --resume")
    state = json.loads(info.read_text())
    if sha256_file(weights) != state.get("weights_sha256"):
        raise WbcnetError(f"{weights}: does not match the SHA-256 in last.json (damaged on disk); start again")
    saved, now = state["settings"], cfg.settings()
    differ = [k for k in now if saved.get(k) != now[k]]
    if differ:
        raise WbcnetError(f"{out}: this run was started with other settings ({', '.join(differ)}: "
                          f"{saved.get(differ[0])!r}, now {now[differ[0]]!r}); resume with the same command")
    return load_tensors(weights), state


def pretrain(cfg: PretrainConfig, resume: bool = False, on_epoch_end=None) -> Path:
    """Pretrain as `cfg` says (or continue the run in cfg.out); returns OUT, which then holds
    backbone.safetensors and backbone.json. `on_epoch_end(epoch, row)` runs after each epoch's
    checkpoint is on disk (tests interrupt there)."""
    from ..core.errors import needs

    needs("pretrain", "lightly", install="lightly: pip install -e '.[pretrain]' (or pip install lightly)")
    out = Path(cfg.out)
    if (out / "backbone.json").exists():
        raise WbcnetError(f"{out}: holds a finished pretraining (backbone.json); pick a new --out")
    saved = _read_last(out, cfg) if resume else None
    if not resume and out.is_dir() and any(out.iterdir()):
        raise WbcnetError(f"{out}: holds a pretraining run; continue it with --resume, or pick a new --out")
    created = not out.exists()
    ensure_writable_dir(out, "pretraining folder")
    try:
        return _pretrain(cfg, out, saved, on_epoch_end)
    except BaseException:
        # A new run that stops before its first epoch ends leaves no folder behind.
        if created:
            discard_unstarted(out, "last.json")
        raise


def _pretrain(cfg: PretrainConfig, out: Path, saved: tuple[dict, dict] | None, on_epoch_end) -> Path:
    from lightly.loss import NTXentLoss

    from .classifier import build_model, model_args_of, preprocess_of

    saved_tensors, saved = saved if saved else (None, None)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    bf16 = use_bf16(None, device)
    channels_last = bf16
    target = cfg.target()
    prep = preprocess_of(target)
    print(f"pretraining folder: {out}  (SimCLR on {target.model} features, {target.img_size} px, crop {target.crop}, "
          f"{device}, bf16={bf16})")
    cells = read_cells(cfg, prep)
    n = len(cells)
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise WbcnetError(f"{n} cells is less than one batch of {cfg.batch_size}; lower --batch-size or add cells")
    if saved and [s["cells"] for s in saved["sources"]] != [s["cells"] for s in cells.sources]:
        raise WbcnetError(f"{out}: the sources hold other cells now ({', '.join(str(s['cells']) for s in cells.sources)}"
                          f" cells, the run had {', '.join(str(s['cells']) for s in saved['sources'])}); cannot resume")
    # float64: round(4) then gives plain 4-digit numbers in backbone.json
    mean, std = (saved["mean"], saved["std"]) if saved else channel_stats(cells, dtype=np.float64)

    model = build_model(target, _UNUSED_CLASSES)  # seeded with the recipe's seed
    head = projection_head(model, cfg)
    model, head = model.to(device), head.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    features = Features(model)
    criterion = NTXentLoss(temperature=cfg.temperature)
    optimizer = optimizer_for([model, head], cfg)
    start, history = 0, []
    if saved:
        model.load_state_dict(part(saved_tensors, "model"))
        head.load_state_dict(part(saved_tensors, "head"))
        optimizer_from_parts(optimizer, {k: v.to(device) for k, v in saved_tensors.items()}, saved["optimizer"])
        start, history = saved["epoch"] + 1, saved["history"]
        print(f"resuming after epoch {start}")
    schedule = Schedule.of_epochs(steps_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.lr)
    settings = cfg.settings()
    step = start * steps_per_epoch

    def train_epoch(epoch: int) -> dict:
        nonlocal step
        model.train()
        head.train()
        g, g_aug = epoch_generators(cfg.seed, epoch, device)  # the epoch's order and, on the CPU, its views
        order = torch.randperm(n, generator=g).numpy()
        t0 = time.time()

        def one_batch(b: int) -> dict:
            idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])  # memory-mapped caches read faster in order
            x = torch.from_numpy(cells.take(idx)).to(device)
            views = two_views(x, cfg.augment, g_aug, mean, std, channels_last)
            return {"loss": simclr_step(features, head, criterion, optimizer, views, bf16), "n": 1}

        totals, step = run_epoch(one_batch, steps_per_epoch, optimizer, schedule, step,
                                 desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=cfg.progress)
        seconds = time.time() - t0
        return {"epoch": epoch + 1, "loss": round(totals["loss"] / steps_per_epoch, 5),
                "lr": f"{optimizer.param_groups[0]['lr']:.3e}", "epoch_s": round(seconds, 1),
                "cells_per_s": round(steps_per_epoch * cfg.batch_size / seconds, 1)}

    def end_epoch(epoch: int, row: dict) -> bool:
        _save_last(out, model, head, optimizer, {"epoch": epoch, "history": history, "settings": settings,
                                                 "sources": cells.sources, "mean": mean, "std": std})
        print(f"epoch {epoch + 1:3d}/{cfg.epochs}  NT-Xent loss {row['loss']:.4f} (chance "
              f"{math.log(2 * cfg.batch_size - 1):.2f})  ({row['epoch_s']}s, {row['cells_per_s']} cells/s, "
              f"2 views each)", flush=True)
        return False

    run_epochs(start, cfg.epochs, train_epoch, end_epoch, history, out / "history.csv", HISTORY_FIELDS,
               on_epoch_end=on_epoch_end)

    meta = BackboneMeta(model=target.model, model_args=model_args_of(target), img_size=target.img_size,
                        preprocess=prep.to_dict(), mean=list(mean), std=list(std), method="simclr",
                        recipe={k: v for k, v in settings.items() if k not in ("data", "unlabelled", *TARGET_FIELDS)},
                        sources=cells.sources, cells=n, seed=cfg.seed,
                        final_loss=history[-1]["loss"] if history else None, git_commit=git_commit(),
                        wbcnet_version=__version__)
    weights = write_backbone(out, model, meta)
    from ..render.plots import plot_pretrain_loss

    plot_pretrain_loss(history, math.log(2 * cfg.batch_size - 1), out / "loss.png")
    print(f"backbone: {weights} (sha256 {meta.weights_sha256[:12]}); train from it with --pretrained {out}")
    return out


def run_command(opts, args) -> int:
    """`wbcnet pretrain`: the run from its flags (and the target --config); KeyboardInterrupt says how to resume."""
    cfg = config_from_args(args)
    try:
        pretrain(cfg, resume=opts.resume)
    except KeyboardInterrupt:
        if (Path(cfg.out) / "last.json").exists():
            print(f"\ncontinue with the same command and --resume (the last finished epoch is in {cfg.out})",
                  file=sys.stderr)
        raise
    return 0


__all__ = ["CellPool", "read_cells", "pretrain", "run_command", "Features", "two_views",
           "simclr_step", "projection_head", "optimizer_for"]
