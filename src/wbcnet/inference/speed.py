"""How fast a model runs on this machine, beside a yardstick measured in the same breath.

The yardstick is PIL decoding one of the bundled 224 px cell JPEGs and resizing it to 112 px, on
one thread: a slower or busier machine shows in it as much as in the model's figure, so the two
read together (benchmarks/model_speed.py and `wbcnet models` both use these)."""
from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from ..core.files import ASSETS
from .runner import predict_logits


def median_seconds(fn, warmup: int = 1, repeats: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def decode_reference(n: int = 300, repeats: int = 3) -> float:
    """Pictures/s: PIL opens a bundled cell JPEG, converts and resizes it to 112 px, one thread."""
    data = min((ASSETS / "sample").glob("*/*.jpg")).read_bytes()

    def run():
        for _ in range(n):
            Image.open(io.BytesIO(data)).convert("RGB").resize((112, 112), Image.BILINEAR)

    return n / median_seconds(run, repeats=repeats)


def classifier_speed(model, meta, n: int = 256, batch_size: int = 64, bf16: bool | None = None,
                     repeats: int = 3) -> float:
    """Images/s of the model alone (the one inference path, uint8 inputs at its size, no decoding;
    `bf16` None: as inference runs it, bf16 where the CPU has it natively)."""
    x = np.random.default_rng(0).integers(0, 255, (n, 3, meta.img_size, meta.img_size), dtype=np.uint8)
    return n / median_seconds(lambda: predict_logits(model, x, meta.mean, meta.std, batch_size, bf16),
                              repeats=repeats)


__all__ = ["classifier_speed", "decode_reference", "median_seconds"]
