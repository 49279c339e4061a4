"""Semi-supervised adaptation to a lab: its few labelled cells and its many unlabelled ones at once.

FixMatch (Sohn et al. 2020) with a mean teacher (Tarvainen & Valpola 2017):
- a teacher, the moving average of the student's weights, labels each unlabelled cell from a
  gently transformed view (turns, mirrors, a small shift: nothing that changes a stain);
- where the teacher is sure (calibrated probability >= `threshold`), the student must give that
  class to a strongly transformed view of the same cell (the parent's own training augmentation:
  stain, colour, blur, warp), so the features learn to ignore what differs between labs;
- the labelled cells keep their cross-entropy, sampled so every class is equally present;
- SHOT's diversity term (Liang et al. 2020) keeps the batch's mean prediction spread over the
  classes, so that pseudo-labels cannot collapse onto the class the parent favours in this lab.

The teacher is what is kept. `self_train` only trains; adapt.adapt_lab reads the lab's cells,
runs it and writes the checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.augment import AugmentConfig, augment_batch, normalize
from ..engine.ema import EMA
from ..engine.optim import make_optimizer
from ..engine.schedule import Schedule


@dataclass(frozen=True)
class SemiConfig:
    steps: int = 500
    labelled_batch: int = 32
    unlabelled_batch: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 20
    threshold: float = 0.8          # teacher's calibrated confidence a pseudo-label needs
    unlabelled_weight: float = 1.0
    diversity_weight: float = 0.3   # SHOT's: the batch's mean prediction kept spread over the classes
    label_smoothing: float = 0.1
    ema_decay: float = 0.99
    seed: int = 0


# The gentle view the teacher sees: a cell has no up, so turns and mirrors change nothing it knows.
WEAK = AugmentConfig(rotation=0.0, shift=0.05, shear=0.0, zoom=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                     hue=0.0, channel_gain=0.0)


@dataclass
class StepStats:
    step: int
    loss: float
    labelled_loss: float
    mask_rate: float        # share of the unlabelled batch the teacher was sure of
    lr: float


def self_train(model: torch.nn.Module, mean, std, temperature: float, unlabelled: np.ndarray, augment: AugmentConfig,
               cfg: SemiConfig = SemiConfig(), labelled: np.ndarray | None = None, labels: np.ndarray | None = None,
               on_step: Callable[[StepStats], None] | None = None) -> torch.nn.Module:
    """Train `model` on a lab's cells (uint8 (N, 3, S, S) arrays); returns the teacher (a copy).
    `temperature`: the model's, so that `threshold` is a calibrated probability."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout
    teacher = EMA(model, cfg.ema_decay)
    optimizer = make_optimizer([model], cfg.lr, cfg.weight_decay, decay_everything=True)
    schedule = Schedule(0, cfg.steps, cfg.warmup_steps, cfg.lr)
    strong = augment  # the parent's own training augmentation: what it learnt to see through
    has_labels = labelled is not None and len(labelled) > 0
    if has_labels:
        labels = np.asarray(labels)
        by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    n_classes = None
    for step in range(cfg.steps):
        schedule.apply(optimizer, step)
        idx = np.sort(torch.randint(len(unlabelled), (min(cfg.unlabelled_batch, len(unlabelled)),), generator=g).numpy())
        xu = torch.from_numpy(np.ascontiguousarray(unlabelled[idx])).to(device)
        with torch.no_grad():
            t_logits = teacher.module(normalize(augment_batch(xu, WEAK, g), mean, std)).float()
            probs = F.softmax(t_logits / temperature, 1)
            confidence, pseudo = probs.max(1)
            mask = (confidence >= cfg.threshold).float()
        parts = [normalize(augment_batch(xu, strong, g), mean, std)]
        if has_labels:
            # Every class equally often: a few cells per class, drawn with replacement.
            per = max(1, cfg.labelled_batch // len(by_class))
            li = np.concatenate([c[torch.randint(len(c), (per,), generator=g).numpy()] for c in by_class])
            parts.insert(0, normalize(augment_batch(torch.from_numpy(labelled[li]).to(device), strong, g), mean, std))
        model.train()
        logits = model(torch.cat(parts)).float()
        n_classes = logits.shape[1]
        lab_loss = torch.zeros((), device=device)
        if has_labels:
            lab_logits, logits = logits[:len(li)], logits[len(li):]
            lab_loss = F.cross_entropy(lab_logits, torch.from_numpy(labels[li]).to(device),
                                       label_smoothing=cfg.label_smoothing)
        unl_loss = (F.cross_entropy(logits, pseudo, reduction="none") * mask).mean()
        mean_pred = F.softmax(logits, 1).mean(0)
        diversity = (mean_pred * torch.log(mean_pred.clamp_min(1e-8))).sum() + math.log(n_classes)  # KL to uniform
        loss = lab_loss + cfg.unlabelled_weight * unl_loss + cfg.diversity_weight * diversity
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        teacher.update(model, step)
        if on_step is not None:
            on_step(StepStats(step + 1, loss.item(), lab_loss.item(), mask.mean().item(), optimizer.param_groups[0]["lr"]))
    model.eval()
    return teacher.module
