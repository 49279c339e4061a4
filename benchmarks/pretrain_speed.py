"""How fast `wbcnet pretrain` steps on this machine, to plan a full run before starting it.

    python -m benchmarks.pretrain_speed [--config configs/multilab.yaml] [--batch-size 128] [--steps 5] [--threads 1]

The package's own step (wbcnet.training.pretrain.two_views and simclr_step, lightly's NT-Xent and head) on
the bundled sample's cells at the config's model and size, after one warm-up step; the two views'
augmentation is timed apart from the model's forward, backward and AdamW step. The cells are the
whole sample pictures resized (the cell crop changes what is decoded, not what a step costs).
Prints cells/s (each cell is two views) and the hours an epoch count takes over N cells.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from wbcnet.training.config import TrainConfig
from wbcnet.data.cache import decode_images
from wbcnet.inference.runner import use_bf16
from wbcnet.training.pretrain import Features, optimizer_for, projection_head, simclr_step, two_views
from wbcnet.training.pretrain_config import from_train_config
from wbcnet.training.classifier import build_model

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "wbcnet" / "assets" / "sample"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/multilab.yaml")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cells", type=int, default=21_000, help="cells an epoch, for the projection (Raabin-WBC + PBC + "
                   "the BCCD fields' cells: about 21,000)")
    p.add_argument("--epochs", type=int, default=None, help="epochs, for the projection (default the recipe's)")
    a = p.parse_args(argv)
    from wbcnet.core.errors import needs

    needs("pretrain", "lightly", install="lightly: pip install -e '.[pretrain]'")
    from lightly.loss import NTXentLoss

    torch.set_num_threads(a.threads)
    cfg = from_train_config(TrainConfig.from_yaml(a.config), out="-", data=["x"], batch_size=a.batch_size)
    target = cfg.target()
    paths = sorted(str(q) for q in SAMPLE.rglob("*.jpg"))
    cells = decode_images(paths, target.img_size, progress=False).images
    model = build_model(target, 5)
    head = projection_head(model, cfg)
    optimizer = optimizer_for([model, head], cfg)
    features, criterion = Features(model), NTXentLoss(temperature=cfg.temperature)
    bf16 = use_bf16(None, "cpu")
    mean, std = [0.5] * 3, [0.25] * 3
    g = torch.Generator().manual_seed(0)
    model.train()
    head.train()
    aug_s, step_s = [], []
    for i in range(a.steps + 1):
        idx = np.sort(np.random.default_rng(i).choice(len(cells), a.batch_size, replace=len(cells) < a.batch_size))
        x = torch.from_numpy(np.ascontiguousarray(cells[idx]))
        t0 = time.perf_counter()
        views = two_views(x, cfg.augment, g, mean, std, bf16)
        t1 = time.perf_counter()
        simclr_step(features, head, criterion, optimizer, views, bf16)
        t2 = time.perf_counter()
        if i:  # the first step warms up
            aug_s.append(t1 - t0)
            step_s.append(t2 - t1)
    aug, step = statistics.median(aug_s), statistics.median(step_s)
    per_cell = (aug + step) / a.batch_size
    epochs = a.epochs or cfg.epochs
    hours = per_cell * a.cells * epochs / 3600
    print(f"{target.model} {target.model_args} at {target.img_size} px, batch {a.batch_size} cells "
          f"({2 * a.batch_size} views), {a.threads} thread(s), bf16={bf16}, median of {a.steps} steps:")
    print(f"  two views' augmentation {aug:.2f} s, forward + backward + AdamW {step:.2f} s: {aug + step:.2f} s a step")
    print(f"  {1 / per_cell:.1f} cells/s ({2 / per_cell:.1f} views/s); an epoch of {a.cells:,} cells "
          f"{per_cell * a.cells / 60:.1f} min, {epochs} epochs {hours:.1f} h (chance loss {math.log(2 * a.batch_size - 1):.2f})")


if __name__ == "__main__":
    main()
