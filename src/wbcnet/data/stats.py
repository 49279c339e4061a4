"""The channel statistics a model's inputs are normalised with."""
from __future__ import annotations

import numpy as np


def channel_stats(images, limit: int = 2000, dtype=np.float32) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (of values in [0, 1], rounded to 4 digits) of up to
    `limit` images spread evenly over `images` (uint8 (N, 3, S, S): an array, or anything of that
    length whose [sorted positions] gives those images). dtype float64 gives plain 4-digit numbers
    after rounding (for a JSON file); training's checkpoints have always used float32."""
    idx = np.linspace(0, len(images) - 1, min(limit, len(images))).astype(int)
    sub = np.asarray(images[idx]).astype(dtype) / 255
    return sub.mean((0, 2, 3)).round(4).tolist(), sub.std((0, 2, 3)).round(4).tolist()
