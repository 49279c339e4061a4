"""wbcnet benchmarks: every number the project's targets talk about, measured in one run.

    python -m benchmarks            # full run (minutes), writes benchmarks/RESULTS.md
    python -m benchmarks --quick    # smoke run (tiny sizes): checks the code, numbers mean nothing

Sections, each a table with the issue's target beside the measurement:
  (a) training throughput: wbcnet.training.classifier.train_step (forward + backward + AdamW step) with training's
      own optimizer and loss, fp32 and bf16 autocast + channels_last; the mhcnn / seed-mhcnn ratio is
      the headline, since both sides come from the same run
  (b) inference: img/s at batch 64 and single-image latency; torch fp32, torch bf16, ONNX Runtime
  (c) `wbcnet predict` on 4,339 575 px JPEGs (Raabin-WBC's test-set size): the whole command in a
      subprocess, start-up included, torch and onnxruntime backends; the one-cell start-up against
      `import torch`; and where the command's time goes, step by step
  (d) a training epoch (wbcnet.training.classifier.train_one_epoch) with images decoded every epoch vs read from
      the uint8 decode cache
  (e) wall time and peak RSS of a real `wbcnet train` run in a subprocess

Everything that runs a model or a training step is the package's own code (wbcnet.inference.runner,
wbcnet.training.classifier, wbcnet.inference.predict, wbcnet.data.cache): the benchmark measures what users run, and
cannot drift from it. Timing: a few warm-up calls, then the median of several timed calls. torch
keeps its default thread count; ONNX Runtime gets one intra-op thread per available core.
"""
from __future__ import annotations

import csv
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
# Measure this checkout's wbcnet, wherever `pip install -e` last pointed (another clone, a CI
# checkout): this process imports it from src/, and every command it starts gets src/ first on
# PYTHONPATH (child_env).
sys.path.insert(0, str(SRC))

import wbcnet  # noqa: E402
from benchmarks.common import cpu_flags, git_state, median_seconds, seconds, table_lines
# git_commit: the package's (tests/test_bench.py), which common.git_state stamps the tables with
from wbcnet.models.checkpoint import git_commit, load_model, new_meta, resolve_checkpoint, save_checkpoint  # noqa: F401
from wbcnet.training.config import TrainConfig
from wbcnet.data.cache import cached_decode, decode_images, default_workers
from wbcnet.core.imageio import load_rgb
from wbcnet.data.scan import Sample
from wbcnet.core.errors import WbcnetError
from wbcnet.inference.runner import predict_logits, run_model, use_bf16
from wbcnet.models import create_model, default_img_size
from wbcnet.inference.predict import expand_inputs, predict_paths, write_rows
from wbcnet.training.classifier import RunData, train_one_epoch, train_step, training_parts

SAMPLE = REPO / "src" / "wbcnet" / "assets" / "sample"
SHARED_TRAIN = REPO.parent / "shared" / "datasets" / "raabin-wbc-train"
RECIPE = REPO / "configs" / "raabin-wbc.yaml"
JPEG_CACHE = REPO / ".cache" / "wbcnet-bench"
CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
MEAN, STD = [0.68, 0.62, 0.70], [0.18, 0.21, 0.17]  # any plausible values: speed does not depend on them
TRAIN_MODELS = ["seed-mhcnn", "mhcnn", "resnet18"]   # each at its default size (120, 112, 112 px)
OURS = ("mhcnn", "seed-mhcnn")                       # built for an image size; timm's resnet18 is not
RAABIN_TEST_SIZE = 4339                              # Raabin-WBC's test set: the predict workload

# The targets.
TARGET_TRAIN_RATIO = 10.0      # mhcnn >= 10x seed-mhcnn training img/s
TARGET_INFER = 1000.0          # img/s at batch 64
TARGET_PREDICT = 400.0         # img/s, the whole `wbcnet predict` command on 4,339 575 px JPEGs
TARGET_TRAIN_MIN = 30.0        # full training wall time, minutes
TARGET_RSS_GB = 4.0            # full training peak RSS


@dataclass
class Settings:
    batch: int = 64
    train_warmup: int = 2
    train_steps: int = 6
    infer_warmup: int = 2
    infer_repeats: int = 8
    latency_repeats: int = 30
    n_jpeg: int = RAABIN_TEST_SIZE  # 575 px JPEGs for (c) and (d)
    predict_repeats: int = 3        # in-process predict and whole-command runs
    startup_repeats: int = 3        # one-cell `wbcnet predict` and `import torch`
    command_warmup: int = 1         # untimed runs of each command first (page cache, shared libraries)
    img_size: int | None = None     # None: each model's default size; --quick uses 64 px to be fast
    quick: bool = False

    def size(self, name: str) -> int:
        return self.img_size or default_img_size(name)


QUICK = Settings(batch=8, train_warmup=1, train_steps=2, infer_warmup=1, infer_repeats=2, latency_repeats=3,
                 n_jpeg=16, predict_repeats=1, startup_repeats=1, img_size=64, quick=True)


# ---------------------------------------------------------------------------------------------
# Helpers: timing, verdicts, the machine

# The benchmarks with commands of their own write beside this file; listed so one page finds them.
OTHER_BENCHMARKS = """

## Other benchmarks (each made by its own command; open the file for its numbers and commit)

| what | command | results |
| --- | --- | --- |
| `wbcnet serve` under load: requests/s, p50/p95 latency at 1, 4, 16 clients | `python -m benchmarks.serve_load` | [results/serve.md](results/serve.md) |
| `wbcnet count` on BCCD fields: detection at three magnifications, fields/s | `python -m benchmarks.count_fields` | [results/count.md](results/count.md) |
| data-parallel training, 1 vs 2 processes (torchrun, gloo) | `python -m benchmarks.ddp` | [results/ddp.md](results/ddp.md) |
| the backbone comparison | `python -m benchmarks.backbones train/speed/table` | [results/backbones.md](results/backbones.md) |
| leave-one-lab-out ablation (each change for other labs on and off; GPU, stain rows on CPU) | `python -m benchmarks.ablation` | [results/ablation.md](results/ablation.md) |
| the shipped recipe leave-one-lab-out: each lab from the model that never saw it, and its stand-ins | `python -m benchmarks.lolo` | [results/lolo.md](results/lolo.md) |
| adapting on day one: 10 labels a class + ~500 unlabelled cells of a lab the parent never saw | `python -m benchmarks.adapt_lab` | [results/adapt_lab.md](results/adapt_lab.md) |
| augmentation throughput before and after issue 28, beside a training step | `python -m benchmarks.augment_speed` | [results/augment_speed.md](results/augment_speed.md) |
"""


def at_least(value: float, target: float, fmt: str) -> str:
    return "met" if value >= target else f"gap: measured {fmt.format(value)}"


def at_most(value: float, target: float, fmt: str) -> str:
    return "met" if value <= target else f"gap: measured {fmt.format(value)}"


def row(measurement: str, value: str, target: str = "—", verdict: str = "—") -> dict:
    print(f"  {measurement}: {value}" + (f"  [{target}: {verdict}]" if target != "—" else ""), flush=True)
    return {"measurement": measurement, "value": value, "target": target, "verdict": verdict}


def child_env() -> dict[str, str]:
    """The environment of every command the benchmark runs: this checkout's src/ first."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(SRC) + (os.pathsep + path if path else "")}


def measured_package() -> str:
    where = Path(wbcnet.__file__).resolve().parent
    try:
        return f"{where.relative_to(REPO)} (this checkout)"
    except ValueError:
        return f"{where} (NOT this checkout: imported before the benchmark could put src/ first)"


def machine_info() -> dict[str, str]:
    model, flags = cpu_flags()
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    mem = "unknown"
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    yes = lambda f: "yes" if f in flags else "no"  # noqa: E731
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": git_state(),
        "wbcnet measured": measured_package(),
        "CPU": model,
        "decode threads (wbcnet's default: the cores, at most 8)": str(default_workers()),
        "avx512_bf16": yes("avx512_bf16"),
        "amx_bf16 / amx_tile": f"{yes('amx_bf16')} / {yes('amx_tile')}",
        "bf16 used by wbcnet by default": "yes" if use_bf16() else "no",
        "memory": mem,
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
        "onnxruntime": ort_version,
        "Python": platform.python_version(),
        "load average at start (1 min)": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown",
    }


def make_model(name: str, size: int, model_args: dict | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=len(CLASSES), **(model_args or {}),
                        **({"img_size": size} if name in OURS else {}))


def build_checkpoint(folder: Path, name: str = "mhcnn", size: int | None = None) -> Path:
    """An untrained model saved as training saves one: same speed as a trained one."""
    size = size or default_img_size(name)
    meta = new_meta(CLASSES, name, {"img_size": size} if name in OURS else {}, size, MEAN, STD)
    return save_checkpoint(folder / name, make_model(name, size), meta)


# ---------------------------------------------------------------------------------------------
# (a) training throughput

def training_img_per_s(name: str, size: int, bf16: bool, s: Settings, model_args: dict | None = None) -> float:
    """Median img/s of train.train_step (forward + backward + AdamW step) on random data: a
    training step without the data pipeline."""
    x = torch.randn(s.batch, 3, size, size)
    y = torch.randint(0, len(CLASSES), (s.batch,))
    # Optimizer and loss as `wbcnet train` builds them for the default config (train.training_parts).
    parts = training_parts(TrainConfig(progress=False, batch_size=s.batch), len(CLASSES), y.numpy(),
                           channels_last=bf16, model=make_model(name, size, model_args).train())
    if bf16:  # as train_one_epoch lays out the batch
        x = x.contiguous(memory_format=torch.channels_last)
    return s.batch / median_seconds(lambda: train_step(parts.model, parts.criterion, parts.optimizer, x, y, bf16),
                                    s.train_warmup, s.train_steps)


def bench_training(s: Settings) -> list[dict]:
    rows, speed = [], {}
    for bf16, label in ((False, "fp32"), (True, "bf16 autocast + channels_last")):
        for name in TRAIN_MODELS:
            size = s.size(name)
            speed[name, bf16] = training_img_per_s(name, size, bf16, s)
            rows.append(row(f"{name} {size} px, {label}", f"{speed[name, bf16]:.1f} img/s"))
        ratio = speed["mhcnn", bf16] / speed["seed-mhcnn", bf16]
        rows.append(row(f"**mhcnn / seed-mhcnn, {label}**", f"**{ratio:.1f}x**", f"≥ {TARGET_TRAIN_RATIO:g}x",
                        at_least(ratio, TARGET_TRAIN_RATIO, "{:.1f}x")))
    best_ratio = max(speed["mhcnn", b] for b in (False, True)) / max(speed["seed-mhcnn", b] for b in (False, True))
    rows.append(row("mhcnn / seed-mhcnn, each at its faster precision", f"{best_ratio:.1f}x",
                    f"≥ {TARGET_TRAIN_RATIO:g}x", at_least(best_ratio, TARGET_TRAIN_RATIO, "{:.1f}x")))
    return rows


# ---------------------------------------------------------------------------------------------
# (b) inference

def inference_rows(label: str, run, size: int, s: Settings) -> list[dict]:
    """`run(uint8 images) -> logits`; batch throughput and single-image latency."""
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (s.batch, 3, size, size), dtype=np.uint8)
    one = batch[:1]
    per_s = s.batch / median_seconds(lambda: run(batch), s.infer_warmup, s.infer_repeats)
    latency = median_seconds(lambda: run(one), s.infer_warmup, s.latency_repeats) * 1000
    return [row(f"{label}, batch {s.batch}", f"{per_s:.0f} img/s", f"≥ {TARGET_INFER:g} img/s",
                at_least(per_s, TARGET_INFER, "{:.0f} img/s")),
            row(f"{label}, single image latency (median)", f"{latency:.1f} ms")]


def bench_inference(s: Settings, workdir: Path) -> list[dict]:
    from wbcnet.inference.export import export_onnx, onnx_backend

    rows = []
    for name in TRAIN_MODELS:
        size = s.size(name)
        model = make_model(name, size).eval()
        for bf16, label in ((False, "fp32"), (True, "bf16 + channels_last")):
            # inference.predict_logits is what evaluate, predict and validation call: uint8 in,
            # normalisation included.
            def run(images, m=model, b=bf16):
                return predict_logits(m, images, MEAN, STD, s.batch, bf16=b, channels_last=b)

            rows += inference_rows(f"{name} {size} px, torch {label}", run, size, s)
    ckpt = build_checkpoint(workdir, "mhcnn", s.size("mhcnn"))
    onnx_path, diff = export_onnx(ckpt, out=workdir / "mhcnn.onnx")
    _, meta = load_model(ckpt)
    rows += inference_rows(f"mhcnn {meta.img_size} px, ONNX Runtime fp32", onnx_backend(onnx_path, meta, s.batch),
                           meta.img_size, s)
    rows.append(row("ONNX vs PyTorch fp32, max abs logit difference (8 sample cells)", f"{diff:.1e}"))
    return rows


# ---------------------------------------------------------------------------------------------
# (c) the `wbcnet predict` command on 575 px JPEGs

def make_jpeg_folder(source: Path, n: int, out: Path, side: int = 575, quality: int = 95) -> list[str]:
    """`n` images of `source` (evenly spread, so every class; repeated if it holds fewer),
    Lanczos-upscaled to `side` px and saved as JPEG: the size of Raabin-WBC's original crops.
    Reused when already complete."""
    done = out.with_name(out.name + ".done")
    if done.exists() and done.read_text().strip() == str(n):
        return expand_inputs([str(out)])[0]
    paths, _ = expand_inputs([str(source)])
    pick = np.linspace(0, len(paths) - 1, n).round().astype(int) if n <= len(paths) else np.arange(n) % len(paths)

    def convert(k_src: tuple[int, int]) -> str:
        k, i = k_src
        src = Path(paths[i])
        dst = out / src.parent.name / f"{src.stem}-{k:05d}.jpg"  # unique even when a source repeats
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im.convert("RGB").resize((side, side), Image.Resampling.LANCZOS).save(dst, "JPEG", quality=quality)
        return str(dst)

    with ThreadPoolExecutor(default_workers()) as pool:
        list(pool.map(convert, enumerate(pick.tolist())))
    done.write_text(str(n))
    return expand_inputs([str(out)])[0]


def wbcnet_command() -> list[str]:
    """How a user runs wbcnet: the `wbcnet` script pip installed beside this interpreter (not a
    pyenv/conda shim, whose own start-up is not wbcnet's), else `python -m wbcnet`."""
    script = Path(sys.executable).with_name("wbcnet")
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "wbcnet"]


def run_seconds(cmd: list[str], log: Path) -> tuple[int, float]:
    """(exit code, wall seconds) of `cmd`, interpreter start-up included."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=child_env()).returncode
    return rc, time.perf_counter() - t0


def median_command(cmd: list[str], log: Path, warmup: int, repeats: int) -> tuple[int, float]:
    """(exit code, median wall seconds) of `cmd`; stops at the first failure."""
    times = []
    for k in range(warmup + repeats):
        rc, sec = run_seconds(cmd, log)
        if rc != 0:
            return rc, float("nan")
        if k >= warmup:
            times.append(sec)
    return 0, statistics.median(times)


def failed_row(what: str, rc: int, log: Path, target: str = "—") -> dict:
    last = log.read_text().strip().splitlines()[-1:] if log.exists() else []
    return row(what, f"failed (exit code {rc}): {last}", target, "gap: command failed" if target != "—" else "—")


def bench_startup(one: str, ckpt_args: list[str], s: Settings, workdir: Path) -> list[dict]:
    """One cell: what a lab waits for, against the floor of any torch program."""
    py = [sys.executable, "-c"]
    probes = [("`python -c \"import torch\"`", py + ["import torch"]),
              ("`python -c \"import wbcnet.cli.main, wbcnet.inference.predict, wbcnet.models.checkpoint\"` (the predict path's imports)",
               py + ["import wbcnet.cli.main, wbcnet.inference.predict, wbcnet.models.checkpoint"]),
              ("`wbcnet predict one.jpg` (one cell, whole command)",
               wbcnet_command() + ["predict", one, *ckpt_args, "--out", str(workdir / "one.csv"), "--no-progress"])]
    rows, took = [], {}
    for k, (label, cmd) in enumerate(probes):
        log = workdir / f"startup-{k}.log"
        rc, sec = median_command(cmd, log, s.command_warmup, s.startup_repeats)
        if rc != 0:
            rows.append(failed_row(label, rc, log))
            continue
        took[label] = sec
        rows.append(row(label + f", median of {s.startup_repeats}", f"{sec:.2f} s"))
    torch_s, one_s = took.get(probes[0][0]), took.get(probes[2][0])
    if torch_s and one_s:
        rows.append(row("one-cell `wbcnet predict` beyond `import torch`",
                        f"{one_s - torch_s:+.2f} s ({one_s / torch_s:.2f}x torch's import)"))
    return rows


def predict_input(meta):
    """What predict_paths decodes a file to for this checkpoint: its preprocessing where this
    wbcnet has one (cells/preprocess.py), else its image size."""
    try:
        from wbcnet.cells.preprocess import from_meta
    except ImportError:
        return meta.img_size
    return from_meta(meta)


def input_label(prep) -> str:
    return prep.key() if hasattr(prep, "key") else f"size={prep}"


def bench_predict(paths: list[str], folder: Path, s: Settings, workdir: Path) -> list[dict]:
    from wbcnet.inference.export import export_onnx, onnx_backend

    workdir.mkdir(parents=True, exist_ok=True)
    try:
        ckpt, which, ckpt_args = resolve_checkpoint(None), "the shipped model", []
    except WbcnetError:
        ckpt = build_checkpoint(workdir, "mhcnn", s.size("mhcnn"))
        which, ckpt_args = "an untrained mhcnn (no shipped model; same speed)", ["--checkpoint", str(ckpt)]
    model, meta = load_model(ckpt)
    onnx_path, _ = export_onnx(ckpt, out=workdir / "predict.onnx")  # never beside the shipped weights
    size, n = meta.img_size, len(paths)
    print(f"  checkpoint: {which} ({meta.model}, {size} px)", flush=True)
    target = f"≥ {TARGET_PREDICT:g} img/s"
    rows = []

    # The whole command, as a user runs it: a fresh process per run, start-up included.
    cli = wbcnet_command()
    commands = {}
    for label, extra in (("torch", []), ("onnxruntime", ["--backend", "onnxruntime", "--onnx", str(onnx_path)])):
        log = workdir / f"predict-{label}.log"
        cmd = cli + ["predict", str(folder), *ckpt_args, "--out", str(workdir / "cli.csv"), "--no-progress", *extra]
        # Untimed runs first: the JPEGs and shared libraries in the page cache, as on any second run.
        rc, sec = median_command(cmd, log, s.command_warmup, s.predict_repeats)
        what = f"**`wbcnet predict DIR --out CSV --no-progress`, {label} backend, whole process incl. start-up**"
        if rc != 0:  # report it and go on: the other sections' numbers are still worth having
            rows.append(failed_row(what, rc, log, target))
            continue
        commands[label] = sec
        rows.append(row(what + f", median of {s.predict_repeats}", f"**{n / sec:.0f} img/s** ({sec:.1f} s)", target,
                        at_least(n / sec, TARGET_PREDICT, "{:.0f} img/s")))

    # In-process, model already loaded: the command minus its start-up.
    torch_label = f"torch ({'bf16' if use_bf16() else 'fp32'}, as predict runs it)"
    backends = {torch_label: None, "onnxruntime": onnx_backend(onnx_path, meta, 64)}
    for label, backend in backends.items():
        def end_to_end(backend=backend):
            found, _ = expand_inputs([str(folder)])
            write_rows(predict_paths(model, meta, found, batch_size=64, backend=backend, progress=False),
                       meta.classes, workdir / "predictions.csv")

        sec = median_seconds(end_to_end, 1, s.predict_repeats)
        rows.append(row(f"predict_paths in-process, {label} backend (list folder, decode, model, CSV)",
                        f"{n / sec:.0f} img/s ({sec:.1f} s)"))

    # Where the torch command's time goes: cli.cmd_predict's steps, one at a time, in this process.
    rows += bench_startup(paths[0], ckpt_args, s, workdir / "startup")
    steps = {}
    steps["load_model (read + SHA-256 check + build)"] = seconds(lambda: load_model(ckpt))
    found = []
    steps["expand_inputs (list the folder)"] = seconds(lambda: found.extend(expand_inputs([str(folder)])[0]))
    decoded = []
    prep = predict_input(meta)
    steps[f"decode_images ({default_workers()} threads, 575 px JPEG -> {input_label(prep)})"] = seconds(
        lambda: decoded.append(decode_images(found, prep, progress=False)))
    probs = []
    steps[f"run_model, {torch_label}, batch 64"] = seconds(
        lambda: probs.append(run_model(model, meta, decoded[0].images, 64)))
    out_rows = predict_paths(model, meta, found, batch_size=64, progress=False)
    steps["write_rows (the CSV)"] = seconds(lambda: write_rows(out_rows, meta.classes, workdir / "steps.csv"))
    total = commands.get("torch")
    for label, sec in steps.items():
        share = f", {sec / total:.0%} of the command" if total else ""
        speed = f", {n / sec:.0f} img/s" if label.startswith(("decode", "run_model")) else ""
        rows.append(row(f"step: {label}", f"{sec:.2f} s{speed}{share}"))
    if total:
        rest = total - sum(steps.values())
        rows.append(row("step: the rest (interpreter, imports, argument parsing, building rows, exit)", f"{rest:.2f} s, "
                        f"{rest / total:.0%} of the command"))

    # The two halves at their best, repeated: what limits the command.
    images = decoded[0].images
    for label, run in ((torch_label, lambda: predict_logits(model, images, meta.mean, meta.std, 64)),
                       ("onnxruntime", lambda: backends["onnxruntime"](images))):
        sec = median_seconds(run, 1, s.predict_repeats)
        rows.append(row(f"model only, {label}, median of {s.predict_repeats} (decoded uint8 in memory)",
                        f"{n / sec:.0f} img/s"))
    sec = median_seconds(lambda: decode_images(paths, prep, progress=False), 0, s.predict_repeats)
    rows.append(row(f"decode only, median of {s.predict_repeats} ({default_workers()} threads, {input_label(prep)})",
                    f"{n / sec:.0f} img/s"))
    return rows


# ---------------------------------------------------------------------------------------------
# (d) epoch time with and without the decode cache

class Recorded:
    """The cache's array, noting which rows each batch of train_one_epoch reads."""

    def __init__(self, images):
        self.images, self.batches = images, []

    def __getitem__(self, idx):
        self.batches.append(np.asarray(idx).copy())
        return self.images[idx]


class DecodedOnRead:
    """Stands in for the cache's array: every batch train_one_epoch reads is decoded from the JPEGs
    right then, with load_rgb on `workers` threads, and the next batch (known from a recorded
    epoch in the same order) is decoded while this one trains: the most a no-cache loader overlaps."""

    def __init__(self, paths: list[str], size: int, batches: list[np.ndarray], workers: int):
        self.paths, self.size, self.batches, self.misses, self.k = paths, size, batches, 0, 0
        self.pool, self.ahead = ThreadPoolExecutor(workers), ThreadPoolExecutor(1)
        self.pending = self._submit(0)

    def _decode(self, idx) -> np.ndarray:
        return np.stack(list(self.pool.map(lambda i: load_rgb(self.paths[i], self.size).transpose(2, 0, 1), idx)))

    def _submit(self, k: int):
        return self.ahead.submit(self._decode, self.batches[k]) if k < len(self.batches) else None

    def __getitem__(self, idx):
        idx = np.asarray(idx)
        if self.pending is not None and np.array_equal(idx, self.batches[self.k]):
            x = self.pending.result()
            self.k += 1
            self.pending = self._submit(self.k)
            return x
        self.misses += 1  # not the batch recorded: decode it now, unoverlapped
        return self._decode(idx)

    def close(self) -> None:
        self.ahead.shutdown()
        self.pool.shutdown()


def bench_epoch(paths: list[str], s: Settings, workdir: Path, name: str = "mhcnn") -> list[dict]:
    """One epoch of train.train_one_epoch over `paths` (augmentation, lr schedule, train_step,
    EMA, as `wbcnet train` runs it with the default config), where the uint8 batches come either
    from the decode cache or from decoding the JPEGs right then. Both epochs are epoch 0 of the
    same config, so they draw the same batches in the same order."""
    size, workers = s.size(name), default_workers()
    cfg = TrainConfig(model=name, img_size=size, batch_size=s.batch, epochs=1, progress=False)
    samples = [Sample(p, CLASSES.index(Path(p).parent.name) if Path(p).parent.name in CLASSES else 0, Path(p).stem)
               for p in paths]
    bf16 = use_bf16(cfg.bf16)
    channels_last = bf16 if cfg.channels_last is None else cfg.channels_last
    # Model, optimizer, loss (with class weights where the config asks), EMA and the learning-rate
    # schedule, as `wbcnet train` builds them (train.training_parts).
    parts = training_parts(cfg, len(CLASSES), np.array([smp.label for smp in samples]), channels_last=channels_last,
                           model=make_model(name, size).train())
    ema, sched = parts.ema, parts.schedule
    n_images = sched.steps_per_epoch * s.batch

    def epoch(images, data_samples=samples) -> float:
        data = RunData(data_samples, images)
        t0 = time.perf_counter()
        train_one_epoch(parts.model, parts.criterion, parts.optimizer, data, cfg, 0, 0, sched, MEAN, STD, bf16,
                        channels_last, ema)
        return time.perf_counter() - t0

    # The cache as training uses it: written once, then memory-mapped by every epoch and later run.
    t0 = time.perf_counter()
    cached_decode(paths, size, workdir / "cache", workers, progress=False)
    first_decode = time.perf_counter() - t0
    cache = cached_decode(paths, size, workdir / "cache", workers, progress=False).images
    epoch(cache[:2 * s.batch], samples[:2 * s.batch])  # warm up kernels and allocator before either timed epoch

    recorded = Recorded(cache)
    with_cache = epoch(recorded)
    no_cache_images = DecodedOnRead(paths, size, recorded.batches, workers)
    try:
        no_cache = epoch(no_cache_images)
    finally:
        no_cache_images.close()

    prec = "bf16 + channels_last" if bf16 else "fp32"
    setup = (f"{name} {size} px, batch {s.batch}, {prec}, default TrainConfig (augmentation, {cfg.balance} "
             f"balancing{', EMA' if ema else ''}), {n_images} images/epoch")
    if no_cache_images.misses:
        setup += f"; {no_cache_images.misses} batches were not in the recorded order and were decoded unoverlapped"
    return [row(f"decode {len(paths)} JPEGs into the cache, once (first run only)", f"{first_decode:.1f} s"),
            row(f"epoch, decoded every epoch ({workers} threads, one batch prefetched)",
                f"{no_cache:.1f} s ({n_images / no_cache:.0f} img/s)"),
            row("epoch, from the uint8 cache (memory-mapped)",
                f"{with_cache:.1f} s ({n_images / with_cache:.0f} img/s)"),
            row("cache speed-up per epoch", f"{no_cache / with_cache:.1f}x"),
            row("setup", setup)]


# ---------------------------------------------------------------------------------------------
# (e) a real training run: wall time and peak RSS

def run_measured(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run `cmd`; returns (exit code, wall seconds, peak RSS in GB of that process)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=child_env())
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not every child's so far
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    rss_bytes = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # Linux reports KiB
    return proc.returncode, wall, rss_bytes / 1e9


def bench_full_training(train_args: str, full_epochs: int, workdir: Path) -> list[dict]:
    run_dir, log = workdir / "train-run", workdir / "train.log"
    cmd = [sys.executable, "-m", "wbcnet", "train", *shlex.split(train_args), "--out", str(run_dir),
           "--cache-dir", str(workdir / "train-cache"), "--no-progress"]
    print(f"  running: wbcnet train {train_args} (fresh decode cache)", flush=True)
    rc, wall, rss = run_measured(cmd, log)
    if rc != 0:
        tail = log.read_text()[-1500:]
        return [row(f"`wbcnet train {train_args}`", f"failed with exit code {rc}; log tail: {tail!r}",
                    "runs", "gap: run failed")]
    with open(run_dir / "metrics.csv") as fh:
        epochs = [float(r["epoch_s"]) for r in csv.DictReader(fh)]
    per_epoch = statistics.mean(epochs)
    projected = wall + max(0, full_epochs - len(epochs)) * per_epoch
    return [row("command", f"`wbcnet train {train_args}` ({len(epochs)} epochs, fresh decode cache)"),
            row("wall time of that run (decode, epochs, final evaluation)", f"{wall / 60:.1f} min"),
            row("mean epoch (train + validation)", f"{per_epoch:.0f} s"),
            row(f"projected wall for {full_epochs} epochs (no early stop): this run + "
                f"{max(0, full_epochs - len(epochs))} more epochs",
                f"{projected / 60:.1f} min", f"≤ {TARGET_TRAIN_MIN:g} min",
                at_most(projected / 60, TARGET_TRAIN_MIN, "{:.1f} min")),
            row("peak RSS of the training process", f"{rss:.2f} GB", f"≤ {TARGET_RSS_GB:g} GB",
                at_most(rss, TARGET_RSS_GB, "{:.2f} GB"))]


# ---------------------------------------------------------------------------------------------
# The report

COLUMNS = ("measurement", "value", "target", "verdict")


def render(info: dict, sections: list[tuple[str, str, list[dict]]], s: Settings, argv: list[str]) -> str:
    lines = ["# wbcnet benchmarks", ""]
    if s.quick:
        lines += ["> **Quick smoke run (`--quick`): tiny batches and repeats. These numbers only show that the "
                  "benchmark code runs; they measure nothing.**", ""]
    lines += [f"Made by `python -m benchmarks {' '.join(argv)}`".rstrip() + f" on {info['date']}, "
              f"commit {info['git commit']}. Targets are the issue's; a verdict is `met` or the gap.", ""]
    lines += ["## Machine", "", "| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in info.items()] + [""]
    targets = [(title, r) for title, _, rows in sections for r in rows if r["target"] != "—"]
    if targets:
        lines += ["## Targets at a glance", ""]
        lines += table_lines(("section",) + COLUMNS, [[f"{t.split(')')[0]})"] + [r[k] for k in COLUMNS]
                                                       for t, r in targets], spaced=True) + [""]
    for title, note, rows in sections:
        lines += [f"## {title}", "", note, ""] + table_lines(COLUMNS, [[r[k] for k in COLUMNS] for r in rows],
                                                                spaced=True) + [""]
    return "\n".join(lines)


def run_all(s: Settings, sections: str, data: Path | None, train_args: str, full_epochs: int, out: Path,
            argv: list[str]) -> str:
    info = machine_info()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    done: list[tuple[str, str, list[dict]]] = []

    def section(title: str, note: str, measure) -> None:
        print(title, flush=True)
        t0 = time.perf_counter()
        rows = measure()
        took = time.perf_counter() - t0
        load = f" Load average (1 min) at its end: {os.getloadavg()[0]:.2f}." if hasattr(os, "getloadavg") else ""
        print(f"  ({took:.0f} s)", flush=True)
        done.append((title, f"{note} This section took {took:.0f} s.{load}", rows))

    with tempfile.TemporaryDirectory(prefix="wbcnet-bench-") as tmp:
        workdir = Path(tmp)
        if "a" in sections:
            size = f"{s.img_size} px" if s.img_size else "its default size"
            section("(a) Training throughput",
                    f"Batch {s.batch}, random data, forward + backward + AdamW step; median of {s.train_steps} steps "
                    f"after {s.train_warmup} warm-up steps. Each model at {size}. The ratio is the headline: both "
                    "sides come from this run, on this machine.",
                    lambda: bench_training(s))
        if "b" in sections:
            section("(b) Inference",
                    f"`predict_logits` on uint8 images (normalisation included), batch {s.batch}: median of "
                    f"{s.infer_repeats} runs; latency: median of {s.latency_repeats} single-image runs. "
                    "ONNX Runtime: the `wbcnet.inference.export` graph, uint8 in, all cores.",
                    lambda: bench_inference(s, workdir / "b"))
        if "c" in sections or "d" in sections:
            if data is not None and data.is_dir() and not s.quick:
                folder, source = JPEG_CACHE / f"jpeg575-v2-n{s.n_jpeg}", str(data)
            else:
                data, folder, source = SAMPLE, workdir / "jpeg575", "the bundled sample"
            print(f"making (or reusing) {s.n_jpeg} 575 px JPEGs in {folder} ...", flush=True)
            paths = make_jpeg_folder(data, s.n_jpeg, folder)
            kib = statistics.mean(os.path.getsize(p) for p in paths) / 1024 if paths else 0.0
            note = (f"{len(paths)} JPEGs, 575x575, quality 95, {kib:.0f} KiB on average, Lanczos-upscaled from "
                    f"{source} (Raabin-WBC's 575 px originals are not here; upscaled cells hold less detail, so "
                    f"they may decode a little faster than the originals).")
        if "c" in sections:
            section("(c) `wbcnet predict` end to end",
                    f"{note} Command rows: `{'wbcnet' if len(wbcnet_command()) == 1 else 'python -m wbcnet'} predict` in a fresh "
                    f"process, median of {s.predict_repeats} runs after one untimed run (files in the page cache). "
                    "In-process rows time the same work with the model already loaded. The step rows split the "
                    "torch command into cli.cmd_predict's steps, each timed once in this process; start-up rows "
                    f"are medians of {s.startup_repeats} fresh processes after one untimed run.",
                    lambda: bench_predict(paths, folder, s, workdir / "c"))
        if "d" in sections:
            section("(d) Training epoch: decode every epoch vs the uint8 cache",
                    f"{note} Both epochs are `wbcnet.training.classifier.train_one_epoch` (epoch 0 of the same config: same "
                    "batches, order, augmentation and training step); only where the uint8 batch comes from "
                    "differs.",
                    lambda: bench_epoch(paths, s, workdir / "d"))
        if "e" in sections:
            section("(e) Training run: wall time and peak RSS",
                    "A real `wbcnet train` in a subprocess; peak RSS is that process's ru_maxrss (os.wait4). A "
                    "short run by default (set with --train-args): its peak RSS is a full run's (same data in "
                    "memory, same model), and the full run's wall time is projected from its mean epoch.",
                    lambda: bench_full_training(train_args, full_epochs, workdir / "e"))
    if hasattr(os, "getloadavg"):  # other work on the machine slows every number above; say how much there was
        info["load average at end (1 min)"] = f"{os.getloadavg()[0]:.2f}"
    text = render(info, done, s, argv) + OTHER_BENCHMARKS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return text


def default_train_args(quick: bool) -> str:
    if quick or not SHARED_TRAIN.is_dir():
        return f"--data {SAMPLE} --epochs {1 if quick else 2} --img-size {64 if quick else 112} --batch-size 32"
    return f"--config {RECIPE.relative_to(REPO)} --epochs 2"


def recipe_epochs() -> int:
    try:
        return int(yaml.safe_load(RECIPE.read_text())["epochs"])
    except (OSError, KeyError, TypeError, ValueError):
        return 40
