"""The optimizer of a training loop, and its parameter groups."""
from __future__ import annotations

import torch


def param_groups(modules, weight_decay: float) -> list[dict]:
    """The parameters of `modules`, in order: weights decayed, biases and norms (1-d) not."""
    decay, no_decay = [], []
    for m in modules:
        for p in m.parameters():
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(modules, lr: float, weight_decay: float, kind: str = "adamw",
                   decay_everything: bool = False) -> torch.optim.Optimizer:
    """AdamW (kind "sgd": SGD with Nesterov momentum 0.9) over param_groups(). `decay_everything`:
    one group, weight decay on every parameter (semi-supervised adaptation and the finder)."""
    groups = ([{"params": [p for m in modules for p in m.parameters()], "weight_decay": weight_decay}]
              if decay_everything else param_groups(modules, weight_decay))
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)
