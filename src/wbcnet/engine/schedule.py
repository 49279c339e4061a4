"""The learning rate at each step: a linear warmup, then a cosine decay to 0 at the last step.

One schedule for every loop (train, pretrain, semi, the finder). It is a pure function of the
step, so a resumed run sets exactly the rates an uninterrupted one would. The finder's variant
(`ramp_over_cosine`) ramps a cosine that already starts at step 0, as it always has.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """`total_steps` steps, the first `warmup_steps` of them warming up to `base_lr`.
    `steps_per_epoch`: for loops that count epochs (0 for those that count steps only)."""
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    base_lr: float
    ramp_over_cosine: bool = False

    @classmethod
    def of_epochs(cls, steps_per_epoch: int, epochs: int, warmup_epochs: float, base_lr: float) -> "Schedule":
        return cls(steps_per_epoch, steps_per_epoch * epochs, int(warmup_epochs * steps_per_epoch), base_lr)

    def lr(self, step: int) -> float:
        if self.ramp_over_cosine:  # the finder's: warmup multiplies a cosine over all the steps
            return self.base_lr * (min(1.0, (step + 1) / self.warmup_steps)
                                   * 0.5 * (1 + math.cos(math.pi * min(1.0, step / self.total_steps))))
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def apply(self, optimizer, step: int) -> float:
        """Set every parameter group's learning rate to the step's; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
