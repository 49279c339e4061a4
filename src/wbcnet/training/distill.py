"""Knowledge distillation: a small model learns from a large one (`wbcnet train --teacher RUN`).

The teacher is any wbcnet checkpoint with the same classes and the same cell crop; it may be
larger, slower and at a higher resolution than the model being trained (the student). The
student's training images are then decoded at the teacher's size and augmented there; the teacher
sees each augmented batch at its own size, the student sees the very same view resized to its own
(Beyer et al. 2022, "a good teacher is patient and consistent": one view for both). Validation,
the test split and every later use of the student are at the student's size: only training pays
for the teacher.

Loss: (1 - w) x the usual label-smoothed cross-entropy + w x T^2 x KL(teacher || student) on
logits softened by T (Hinton et al. 2015; T^2 keeps the gradient's scale as T changes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.errors import WbcnetError
from ..data.augment import normalize
from ..models import checkpoint as ckpt


@dataclass
class Teacher:
    model: torch.nn.Module
    meta: ckpt.CheckpointMeta
    weight: float
    temperature: float

    @property
    def img_size(self) -> int:
        return self.meta.img_size

    @torch.no_grad()
    def logits(self, x: torch.Tensor, bf16: bool) -> torch.Tensor:
        """Teacher logits for an augmented batch in [0, 1] (N, 3, S, S), any S."""
        if x.shape[-1] != self.img_size:
            x = resize(x, self.img_size)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.model(normalize(x, self.meta.mean, self.meta.std)).float()

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        """The student's loss: `hard` (its label loss) mixed with the softened teacher's."""
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                        reduction="batchmean") * t * t
        return (1 - self.weight) * hard + self.weight * soft

    def record(self) -> dict:
        """What the student's checkpoint says about its teacher."""
        return {"checkpoint": str(self.meta.path), "weights_sha256": self.meta.weights_sha256,
                "model": self.meta.model, "img_size": self.img_size, "val_macro_f1": self.meta.val_macro_f1,
                "weight": self.weight, "temperature": self.temperature}


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of a float batch: a downscaled view without aliasing."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def load_teacher(path, weight: float, temperature: float, device: torch.device) -> Teacher:
    """The teacher, in eval mode on `device`."""
    if not (0 <= weight <= 1 and temperature > 0):
        raise WbcnetError(f"distill_weight must be in [0, 1] and distill_temperature above 0, not {weight}, {temperature}")
    model, meta = ckpt.load_model(path)
    return Teacher(model.to(device), meta, weight, temperature)


def check_teacher(teacher: Teacher, classes: list[str], preprocess: dict) -> None:
    """Refuse, in one line, a teacher that can't teach this run: other classes or another crop
    (its size may differ)."""
    meta = teacher.meta
    if list(meta.classes) != list(classes):
        raise WbcnetError(f"{meta.path}: the teacher's classes {meta.classes} are not this run's {classes}")
    mine = {k: v for k, v in preprocess.items() if k not in ("size", "finder_weights")}
    theirs = {k: v for k, v in (meta.preprocess or {}).items() if k not in ("size", "finder_weights")}
    if mine != theirs:
        raise WbcnetError(f"{meta.path}: the teacher was trained on other inputs ({theirs or 'whole pictures'}) "
                          f"than this run's ({mine or 'whole pictures'}); train both with one crop")
