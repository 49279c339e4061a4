"""In-process throughput of classifiers, side by side, with a reference measured in the same run.

    python -m benchmarks.model_speed --checkpoint shipped=src/wbcnet/assets/fast.safetensors \\
        --checkpoint 160=runs/levers/runs/mhcnn-160 --out benchmarks/results/model_speed.md

For each checkpoint: img/s of the model alone (wbcnet.inference.runner.predict_logits, the one inference
path, uint8 inputs at the checkpoint's size, batch 64), fp32, and bf16 where the CPU has it; the
ratio to the first checkpoint. Reference: PIL decoding of a bundled 224 px cell JPEG to 112 px, one thread,
so that a slower or busier machine shows in the same table. Median of 5 timed calls after 2
warm-ups.
"""
from __future__ import annotations

import argparse
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import cpu_name, median_seconds
from wbcnet.models import checkpoint as ckpt
from wbcnet.models.checkpoint import git_commit
from wbcnet.inference.runner import predict_logits, use_bf16


def timed(fn) -> float:
    return median_seconds(fn, warmup=2, repeats=5)


def pil_reference(n: int = 500) -> float:
    """Pictures/s: open one of the bundled sample's cells (a 224 px JPEG), convert, resize to 112,
    one thread: a yardstick for how fast this machine is right now."""
    from wbcnet.cli.demo import SAMPLE

    data = min(Path(SAMPLE).glob("*/*.jpg")).read_bytes()

    def run():
        for _ in range(n):
            Image.open(io.BytesIO(data)).convert("RGB").resize((112, 112), Image.BILINEAR)

    return n / timed(run)


def model_speed(path: str, n: int, bf16: bool) -> tuple[int, float]:
    model, meta = ckpt.load_model(path)
    x = np.random.default_rng(0).integers(0, 255, (n, 3, meta.img_size, meta.img_size), dtype=np.uint8)
    return meta.img_size, n / timed(lambda: predict_logits(model, x, meta.mean, meta.std, 64, bf16))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--n", type=int, default=512, help="images per timed call")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cap = torch.backends.cpu.get_cpu_capability()
    has_bf16 = use_bf16(None, "cpu")  # what inference itself would use
    cpu = cpu_name()
    ref = pil_reference()
    rows, first = [], None
    for spec in args.checkpoint:
        name, path = spec.split("=", 1)
        size, fp32 = model_speed(path, args.n, False)
        b16 = model_speed(path, args.n, True)[1] if has_bf16 else None
        first = first or fp32
        rows.append(f"| {name} | {size} | {fp32:.0f} | {f'{b16:.0f}' if b16 else 'no bf16'} | {fp32 / first:.2f}x |")
        print(rows[-1], flush=True)
    text = (f"# Classifier throughput, in process\n\nMade by `python -m benchmarks.model_speed "
            f"{' '.join('--checkpoint ' + c for c in args.checkpoint)}` at commit {git_commit()}, "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. CPU: {cpu}, {torch.get_num_threads()} threads, "
            f"capability {cap}, bf16 {'yes' if has_bf16 else 'no'}; torch {torch.__version__}. Batch 64, "
            f"uint8 inputs at each model's size, {args.n} images a call, median of 5.\n\n"
            f"Reference, same run: PIL decode of a bundled 224 px cell JPEG + resize to 112, one thread: {ref:.0f} pictures/s.\n\n"
            "| model | px | img/s fp32 | img/s bf16 | fp32 vs the first |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
