"""The training loop every task runs, and the small pieces it is built from.

A task (training/classifier.py's `wbcnet train`, training/pretrain.py's SimCLR) says what a batch
is and what one optimisation step does; the engine runs the rest the same way for all of them:

    set_threads(...)                     torch's threads (one share of the cores per process under torchrun)
    start_from(model, parent)            init-from-parent: a parent checkpoint's weights (its EMA's where it kept one)
    restore(tensors, saved, ...)         a resumed run's model, EMA and optimizer from its last checkpoint
    data_parallel(model, device, d)      DistributedDataParallel under torchrun, else the model itself
    run_epochs(start, epochs, ...)       epoch after epoch: train, let the task checkpoint, write the history
    epoch_generators(seed, epoch, ...)   the epoch's order, augmentation and dropout randomness, seeded by (seed, epoch)
    run_epoch(step_fn, n_batches, ...)   one pass: the schedule's learning rate, the task's step, the EMA

Every epoch draws its randomness from generators seeded with (seed, epoch) and the learning rate
is a pure function of the step (engine/schedule.py), so a run resumed after its last finished
epoch continues exactly as if it had never stopped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..models import checkpoint as ckpt
from .distributed import Dist
from .ema import EMA
from .history import write_history
from .schedule import Schedule


def set_threads(threads: int, d: Dist = Dist()) -> None:
    """`threads` torch threads; 0: torch's default, or under torchrun the cores shared by the
    processes on this machine rather than each taking all of them."""
    if threads:
        torch.set_num_threads(threads)
    elif d.active:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // d.local_world))


def start_from(model: torch.nn.Module, parent) -> ckpt.CheckpointMeta:
    """Init-from-parent: `parent`'s weights (its EMA's where it kept one) in `model`; returns its meta."""
    tensors, meta = ckpt.read_checkpoint(parent)
    ckpt.load_weights(model, ckpt.part(tensors, "ema") or ckpt.part(tensors, "model"), meta.path)
    return meta


def restore(tensors: dict, saved: ckpt.CheckpointMeta, path: Path, model, optimizer, ema: EMA | None,
            device) -> None:
    """A resumed run's model, EMA and optimizer state from its last checkpoint (read at `path`)."""
    ckpt.load_weights(model, ckpt.part(tensors, "model"), path)
    if ema is not None:
        ckpt.load_weights(ema.module, ckpt.part(tensors, "ema"), path)
    ckpt.optimizer_from_parts(optimizer, {k: v.to(device) for k, v in tensors.items()}, saved.optimizer)


def data_parallel(model: torch.nn.Module, device: torch.device, d: Dist, batch_size: int) -> torch.nn.Module:
    """The module to train: under torchrun, gradients averaged over the ranks at every step (the
    weights start equal, DDP copies rank 0's, and stay equal, so `model` and its EMA are the same
    on every rank); else `model` itself."""
    if not d.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    print(f"data-parallel: {d.world} processes, {batch_size} images a batch each")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def epoch_generators(seed: int, epoch: int, device: torch.device,
                     d: Dist = Dist()) -> tuple[torch.Generator, torch.Generator]:
    """The epoch's generators, seeded with (seed, epoch): one on the CPU for its order, one where the
    batch is for its augmentation (the same one on a CPU: a GPU never waits for the CPU); dropout
    reseeded too. Under torchrun every rank draws the same order, but augments and drops out on its
    own, or the ranks would transform their different cells alike."""
    base = seed * 100_003 + epoch
    g = torch.Generator().manual_seed(base)
    if d.active:
        mine = base + 7_919 * d.rank
        g_aug = torch.Generator(device).manual_seed(mine)
        torch.manual_seed(mine)
    else:
        g_aug = g if device.type == "cpu" else torch.Generator(device).manual_seed(base)
        torch.manual_seed(base)  # dropout
    return g, g_aug


def run_epoch(step_fn: Callable[[int], dict], n_batches: int, optimizer, schedule: Schedule, step: int,
              ema: EMA | None = None, model=None, d: Dist = Dist(), desc: str = "",
              progress: bool = True) -> tuple[dict, int]:
    """One pass of `n_batches` steps from global step `step`. For batch b, the learning rate is set
    to the schedule's, then `step_fn(b)` trains on it and returns sums to add up (its "n": how
    many things they are sums over; the bar shows their means); then the EMA (of `model`, the
    weights inside DDP) follows. Returns the sums over the epoch (over all ranks) and the next step."""
    totals: dict = {}
    bar = tqdm(range(n_batches), desc=desc, unit="batch", leave=False, disable=not progress, dynamic_ncols=True)
    for b in bar:
        schedule.apply(optimizer, step)
        for k, v in step_fn(b).items():
            totals[k] = totals.get(k, 0) + v
        if ema is not None:
            ema.update(model, step)
        step += 1
        bar.set_postfix({**{k: f"{v / totals['n']:.4f}" for k, v in totals.items() if k != "n"},
                         "lr": f"{optimizer.param_groups[0]['lr']:.2e}"})
    if not totals:
        return totals, step
    return dict(zip(totals, d.sum(list(totals.values())))), step


def run_epochs(start: int, epochs: int, train_epoch: Callable[[int], dict], end_epoch: Callable[[int, dict], bool],
               history: list[dict], history_csv: Path, fields: list[str], d: Dist = Dist(), on_epoch_end=None,
               stopped: bool = False) -> list[dict]:
    """Epochs `start` to `epochs` - 1: `train_epoch(epoch)` trains one and returns its history row;
    `end_epoch(epoch, row)` checkpoints and reports it and says whether to stop (early stopping);
    then rank 0 rewrites the history CSV, and `on_epoch_end(epoch, row)` runs with the
    checkpoint on disk (tune reports there; tests interrupt there). Returns the history."""
    for epoch in range(start, epochs):
        if stopped:
            break
        row = train_epoch(epoch)
        history.append(row)
        stopped = end_epoch(epoch, row)
        if d.main:
            write_history(history_csv, history, fields)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    return history
