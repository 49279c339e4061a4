"""`wbcnet predict` beside its parts, measured in one run on one CPU.

    python -m benchmarks.predict_speed [--n 2000] [--out benchmarks/results/predict_speed.md]

Makes N 575 px JPEGs (Raabin-WBC's original size: the bundled sample cells, enlarged, quality 90;
any 575 px JPEGs behave alike) and measures, one after another:
- PIL open + draft + convert + resize to 112, one thread (the decode reference);
- the same decode at the cell crop's size plus the learned finder, one thread, in chunks of 32
  paths as predict's reading threads make them (the finder runs on each chunk as one batch), and
  one picture at a time;
- the shipped model alone, fp32, batch 64, torch's threads;
- the bound of the parts on this machine's cores: decode+find spread over the cores, then the model;
- the whole command, `wbcnet predict DIR --out CSV`, start-up included, and `wbcnet predict one.jpg`.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def make_pictures(folder: Path, n: int) -> list[Path]:
    sample = sorted((ROOT / "src" / "wbcnet" / "assets" / "sample").glob("*/*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = Image.open(sample[i % len(sample)]).convert("RGB").resize((575, 575), Image.Resampling.BICUBIC)
        out.append(folder / f"cell_{i:05d}.jpg")
        img.save(out[-1], quality=90)
    return out


def per_second(fn, items) -> float:
    t0 = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_speed.md")
    args = ap.parse_args(argv)

    import torch

    from benchmarks.common import cpu_summary, git_state
    from wbcnet.models.checkpoint import load_model
    from wbcnet.core.imageio import load_rgb
    from wbcnet.cells.locate import find_cell, find_cell_batch
    from wbcnet.cells.preprocess import from_meta, load_input, load_inputs
    from wbcnet.data.cache import CHUNK
    from wbcnet.inference.runner import run_model

    model, meta = load_model()
    prep = from_meta(meta)
    lines = ["# wbcnet predict beside its parts", "",
             f"Made by `python -m benchmarks.predict_speed --n {args.n}` at commit {git_state()}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. CPU: {cpu_summary()}; torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()}.", "",
             "| what | pictures/s |", "|---|---|"]

    def row(what, value):
        lines.append(f"| {what} | {value:.0f} |")
        print(lines[-1], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_pictures(Path(tmp) / "cells", args.n)
        some = paths[: min(500, len(paths))]
        decode = per_second(lambda p: load_rgb(p, 112), some)
        row("PIL open + draft + convert + resize to 112, one thread", decode)
        load_input(some[0], prep)  # the finder's weights loaded before timing
        chunks = [some[i:i + CHUNK] for i in range(0, len(some), CHUNK)]
        crop = per_second(lambda part: load_inputs(part, prep), chunks) * len(some) / len(chunks)
        row(f"decode + learned finder + crop + resize (the model's input), one thread, chunks of {CHUNK}", crop)
        row("the same, one picture at a time", per_second(lambda p: load_input(p, prep), some))
        rgbs = [load_rgb(p, min_side=280) for p in some[:192]]
        row("the learned finder alone, one picture at a time, one thread", per_second(find_cell, rgbs))
        batches = [rgbs[i:i + CHUNK] for i in range(0, len(rgbs), CHUNK)]
        row(f"the learned finder alone, batches of {CHUNK}, one thread",
            per_second(find_cell_batch, batches) * len(rgbs) / len(batches))
        batch = np.stack([load_input(p, prep)[0].transpose(2, 0, 1) for p in some[:256]])
        run_model(model, meta, batch[:64], batch_size=64)
        t0 = time.perf_counter()
        for _ in range(4):
            run_model(model, meta, batch, batch_size=64)
        model_rate = 4 * len(batch) / (time.perf_counter() - t0)
        row("the shipped model alone, batch 64", model_rate)
        cores = os.cpu_count() or 1
        bound = 1 / (1 / (crop * cores) + 1 / model_rate)
        row(f"bound of the parts: input making on {cores} cores, then the model", bound)
        # Issue 30's yardstick: what predict could reach if finding the cell cost nothing.
        decode_bound = 1 / (1 / (decode * cores) + 1 / model_rate)
        row(f"bound of decoding alone on {cores} cores, then the model (no finder)", decode_bound)
        t0 = time.perf_counter()
        subprocess.run(["wbcnet", "predict", str(Path(tmp) / "cells"), "--out", str(Path(tmp) / "p.csv"), "--no-progress"],
                       check=True, capture_output=True)
        whole = len(paths) / (time.perf_counter() - t0)
        row(f"`wbcnet predict DIR --out CSV` on {len(paths)} pictures, start-up included", whole)
        # The same command with the threshold finder of earlier versions: the shipped model's copy
        # whose preprocessing names it (its crops in forked processes, as before).
        import json
        import shutil

        assets = ROOT / "src" / "wbcnet" / "assets"
        shutil.copy(assets / "fast.safetensors", Path(tmp) / "classic.safetensors")
        doc = json.loads((assets / "fast.json").read_text())
        doc["preprocess"] = {**doc.get("preprocess", {}), "finder": "classic"}
        (Path(tmp) / "classic.json").write_text(json.dumps(doc))
        t0 = time.perf_counter()
        subprocess.run(["wbcnet", "predict", str(Path(tmp) / "cells"), "--out", str(Path(tmp) / "c.csv"), "--no-progress",
                        "--checkpoint", str(Path(tmp) / "classic.safetensors")], check=True, capture_output=True)
        classic = len(paths) / (time.perf_counter() - t0)
        row("the same command with the threshold finder (`finder: classic` in the checkpoint)", classic)
        t0 = time.perf_counter()
        subprocess.run(["wbcnet", "predict", str(paths[0]), "--out", str(Path(tmp) / "one.csv"), "--no-progress"],
                       check=True, capture_output=True)
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        torch_import = time.perf_counter() - t0
    lines += ["", f"The whole command runs at {whole / bound:.2f}x the bound of its parts and at {whole / decode_bound:.2f}x "
              f"the bound of decoding and the model alone. `wbcnet predict one.jpg`: "
              f"{one:.2f} s wall, of which `import torch` alone takes {torch_import:.2f} s."]
    print(lines[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
