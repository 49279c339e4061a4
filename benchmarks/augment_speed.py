"""Augmentation and training throughput, the shipped recipe's augmentation before and after issue 28.

    python -m benchmarks.augment_speed [--cells .cache/wbcnet/KEY.npy] [--copy-to benchmarks/results/augment_speed.md]

In one run, on one batch size (the recipe's 64, 112 px cells): `augment_batch` alone with the
augmentation of the model shipped before issue 28 (multilab-v3: affine, colour, HED, blur,
resolution, JPEG) and with configs/multilab.yaml's (those plus defocus, pallor, tint, colour
temperature, gamma, uneven light and noise, kornia where it has the operation); a training step
(`train.train_step`: forward, backward, AdamW, bf16 autocast where the CPU has it) alone, the
same-run reference; and the two together, which is what an epoch costs. Median of timed batches
after warm-up. Real cells from a decode cache where given (`--cells`), else smooth random images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import cpu_summary, median_seconds, table_lines
from wbcnet.models.checkpoint import git_commit
from wbcnet.training.config import TrainConfig
from wbcnet.data.augment import AugmentConfig, augment_batch, normalize
from wbcnet.inference.runner import use_bf16
from wbcnet.training.classifier import train_step, training_parts

REPO = Path(__file__).resolve().parent.parent
# multilab-v3's augmentation (commit c581f78's configs/multilab.yaml), the one shipped before issue 28
BEFORE = dict(rotation=30, shift=0.1, shear=0.15, zoom=0.15, magnify=1.25, brightness=0.15, contrast=0.15,
              saturation=0.4, hue=0.08, channel_gain=0.05, hed=0.1, blur=0.3, downscale=2.5, jpeg=0.3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.augment_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=Path, help="a decode cache array (N, 3, 112, 112) uint8 of real cells")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--copy-to", type=Path)
    a = ap.parse_args(argv)
    recipe = yaml.safe_load((REPO / "configs" / "multilab.yaml").read_text())
    batch = recipe["batch_size"]
    if a.cells:
        arr = np.load(a.cells, mmap_mode="r")
        pick = np.random.default_rng(0).choice(len(arr), batch, replace=False)
        x = torch.from_numpy(np.ascontiguousarray(arr[np.sort(pick)]))
        what = f"{batch} real cells from {a.cells.name}"
    else:
        g = torch.Generator().manual_seed(0)
        small = torch.rand(batch, 3, 28, 28, generator=g) * 255
        x = torch.nn.functional.interpolate(small, size=(112, 112), mode="bilinear").round().to(torch.uint8)
        what = f"{batch} smooth random 112 px images"
    y = torch.arange(batch) % 5
    cfg = TrainConfig.from_dict({k: v for k, v in recipe.items() if k not in ("data",)})
    parts = training_parts(cfg, 5, y.numpy())
    bf16 = use_bf16()  # as `wbcnet train` decides it
    norm = lambda t: normalize(t, [0.5] * 3, [0.25] * 3)
    configs = {"before (multilab-v3)": AugmentConfig(**BEFORE), "after (configs/multilab.yaml)": AugmentConfig(**recipe["augment"])}
    rows = []
    step = median_seconds(lambda: train_step(parts.model, parts.criterion, parts.optimizer, norm(x.float() / 255), y, bf16), 3, a.repeats)
    rows.append(("training step alone (reference)", step))
    for name, aug in configs.items():
        gen = torch.Generator().manual_seed(1)
        rows.append((f"augmentation {name}", median_seconds(lambda: augment_batch(x, aug, gen), 3, a.repeats)))
    for name, aug in configs.items():
        gen = torch.Generator().manual_seed(1)
        rows.append((f"augmentation {name} + training step",
                     median_seconds(lambda: train_step(parts.model, parts.criterion, parts.optimizer,
                                                 norm(augment_batch(x, aug, gen)), y, bf16), 3, a.repeats)))
    commit = git_commit() or "unknown"
    lines = ["# Augmentation throughput, before and after issue 28", "",
             f"`python -m benchmarks.augment_speed{' --cells ' + str(a.cells) if a.cells else ''}`: commit `{commit}`, "
             f"{cpu_summary()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), bf16 autocast {'on' if bf16 else 'off'}; {what}; median of {a.repeats} batches.", ""]
    lines += table_lines(("what", "ms a batch", "images/s"), [(n, f"{s * 1000:.1f}", f"{batch / s:.0f}") for n, s in rows])
    before, after = rows[3][1], rows[4][1]
    lines += ["", f"A training step with the new augmentation runs at {before / after:.0%} of the old one's speed "
              f"(the target: at least 80%)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.copy_to:
        a.copy_to.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
