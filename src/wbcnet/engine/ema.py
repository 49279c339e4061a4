"""Exponential moving average of a model's weights."""
from __future__ import annotations

import copy

import torch


class EMA:
    """Exponential moving average of a model's weights (buffers copied as they are)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model, step: int):
        # Warm up the decay so the average is not dominated by the random initial weights.
        decay = min(self.decay, (1 + step) / (10 + step))
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(decay).add_(m.detach(), alpha=1 - decay)
            else:
                e.copy_(m)

    def state_dict(self):
        return self.module.state_dict()
