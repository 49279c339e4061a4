"""wbcnet benchmarks: every number the project's targets talk about, measured in one run.

    python -m benchmarks            # full run (minutes), writes benchmarks/RESULTS.md
    python -m benchmarks --quick    # smoke run (tiny sizes): checks the code, numbers mean nothing

Sections, each a table with the issue's target beside the measurement:
  (a) training throughput, forward + backward + AdamW step, fp32 and bf16 autocast + channels_last;
      the mhcnn / seed-mhcnn ratio is the headline, since both sides come from the same run
  (b) inference: img/s at batch 64 and single-image latency; torch fp32, torch bf16, ONNX Runtime
  (c) `wbcnet predict` end to end on 575 px JPEGs (decode included), torch and onnxruntime backends,
      next to decode-only and model-only throughput to show what limits it
  (d) a training epoch with images decoded every epoch vs read from the uint8 decode cache
  (e) wall time and peak RSS of a real `wbcnet train` run in a subprocess

Timing: a few warm-up calls, then the median of several timed calls. torch keeps its default
thread count; ONNX Runtime gets one intra-op thread per available core.
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
import torch.nn.functional as F
import yaml
from PIL import Image

from wbcnet.checkpoint import load_model, resolve_checkpoint, save_checkpoint
from wbcnet.data.augment import AugmentConfig, augment_batch, normalize
from wbcnet.data.cache import cached_decode, decode_images, default_workers
from wbcnet.data.imageio import load_rgb
from wbcnet.evaluate import predict_logits, use_bf16
from wbcnet.models import create_model, default_img_size
from wbcnet.predict import expand_inputs, predict_paths, write_rows

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "src" / "wbcnet" / "assets" / "sample"
SHARED_TRAIN = REPO.parent / "shared" / "datasets" / "raabin-wbc-train"
RECIPE = REPO / "configs" / "raabin-wbc.yaml"
JPEG_CACHE = REPO / ".cache" / "wbcnet-bench"
CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
MEAN, STD = [0.68, 0.62, 0.70], [0.18, 0.21, 0.17]  # any plausible values: speed does not depend on them
TRAIN_MODELS = ["seed-mhcnn", "mhcnn", "resnet18"]   # each at its default size (120, 112, 112 px)
OURS = ("mhcnn", "seed-mhcnn")                       # built for an image size; timm's resnet18 is not

# The targets.
TARGET_TRAIN_RATIO = 10.0      # mhcnn >= 10x seed-mhcnn training img/s
TARGET_INFER = 1000.0          # img/s at batch 64
TARGET_PREDICT = 400.0         # img/s, `wbcnet predict` end to end on 575 px JPEGs
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
    n_jpeg: int = 1000          # 575 px JPEGs for (c) and (d)
    predict_repeats: int = 3
    img_size: int | None = None  # None: each model's default size; --quick uses 64 px to be fast
    quick: bool = False

    def size(self, name: str) -> int:
        return self.img_size or default_img_size(name)


QUICK = Settings(batch=8, train_warmup=1, train_steps=2, infer_warmup=1, infer_repeats=2, latency_repeats=3,
                 n_jpeg=16, predict_repeats=1, img_size=64, quick=True)


# ---------------------------------------------------------------------------------------------
# Helpers: timing, verdicts, the machine

def median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def at_least(value: float, target: float, fmt: str) -> str:
    return "met" if value >= target else f"gap: measured {fmt.format(value)}"


def at_most(value: float, target: float, fmt: str) -> str:
    return "met" if value <= target else f"gap: measured {fmt.format(value)}"


def row(measurement: str, value: str, target: str = "—", verdict: str = "—") -> dict:
    print(f"  {measurement}: {value}" + (f"  [{target}: {verdict}]" if target != "—" else ""), flush=True)
    return {"measurement": measurement, "value": value, "target": target, "verdict": verdict}


def cpu_flags() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def git_state() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + (" (with uncommitted changes)" if dirty else "")


def machine_info() -> dict[str, str]:
    model, flags = cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
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
        "CPU": model,
        "cores available": str(cores),
        "avx512_bf16": yes("avx512_bf16"),
        "amx_bf16 / amx_tile": f"{yes('amx_bf16')} / {yes('amx_tile')}",
        "bf16 used by wbcnet by default": "yes" if use_bf16() else "no",
        "memory": mem,
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
        "onnxruntime": ort_version,
        "Python": platform.python_version(),
        "load average at start (1 min)": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown",
    }


def build_checkpoint(folder: Path, name: str = "mhcnn", size: int | None = None) -> Path:
    """An untrained model saved as training saves one: same speed as a trained one."""
    size = size or default_img_size(name)
    meta = {"classes": CLASSES, "model": name, "model_args": {"img_size": size} if name in OURS else {},
            "img_size": size, "mean": MEAN, "std": STD, "temperature": 1.0}
    return save_checkpoint(folder / name, make_model(name, size), meta)


def make_model(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=len(CLASSES), **({"img_size": size} if name in OURS else {}))


# ---------------------------------------------------------------------------------------------
# (a) training throughput

def training_img_per_s(name: str, size: int, bf16: bool, s: Settings) -> float:
    """Median img/s of forward + backward + AdamW step on random data, like train_one_epoch without I/O."""
    model = make_model(name, size).train()
    x = torch.randn(s.batch, 3, size, size)
    y = torch.randint(0, len(CLASSES), (s.batch,))
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return s.batch / median_seconds(step, s.train_warmup, s.train_steps)


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
    from wbcnet.export import export_onnx, onnx_backend

    rows = []
    for name in TRAIN_MODELS:
        size = s.size(name)
        model = make_model(name, size).eval()
        for bf16, label in ((False, "fp32"), (True, "bf16 + channels_last")):
            # predict_logits is what evaluate/predict call: uint8 in, normalisation included.
            def run(images, m=model, b=bf16):
                return predict_logits(m, images, MEAN, STD, s.batch, bf16=b, channels_last=b)

            rows += inference_rows(f"{name} {size} px, torch {label}", run, size, s)
    ckpt = build_checkpoint(workdir, "mhcnn", s.size("mhcnn"))
    onnx_path, diff = export_onnx(ckpt, out=workdir / "mhcnn.onnx")
    _, meta = load_model(ckpt)
    rows += inference_rows(f"mhcnn {meta['img_size']} px, ONNX Runtime fp32", onnx_backend(onnx_path, meta, s.batch),
                           meta["img_size"], s)
    rows.append(row("ONNX vs PyTorch fp32, max abs logit difference (8 sample cells)", f"{diff:.1e}"))
    return rows


# ---------------------------------------------------------------------------------------------
# (c) predict end to end on 575 px JPEGs

def make_jpeg_folder(source: Path, n: int, out: Path, side: int = 575, quality: int = 95) -> list[str]:
    """`n` images of `source` (evenly spread, so every class), Lanczos-upscaled to `side` px and
    saved as JPEG: the size of Raabin-WBC's original crops. Reused when already complete."""
    done = out.with_name(out.name + ".done")
    if done.exists() and done.read_text().strip() == str(n):
        return expand_inputs([str(out)])[0]
    paths, _ = expand_inputs([str(source)])
    pick = [paths[i] for i in np.linspace(0, len(paths) - 1, min(n, len(paths))).astype(int)]

    def convert(src: str) -> str:
        dst = out / Path(src).parent.name / (Path(src).stem + ".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im.convert("RGB").resize((side, side), Image.Resampling.LANCZOS).save(dst, "JPEG", quality=quality)
        return str(dst)

    with ThreadPoolExecutor(default_workers()) as pool:
        list(pool.map(convert, pick))
    done.write_text(str(n))
    return expand_inputs([str(out)])[0]


def cli_seconds(args: list[str], log: Path) -> tuple[int, float]:
    """(exit code, wall seconds) of `python -m wbcnet ARGS`, interpreter and torch start-up included."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, "-m", "wbcnet", *args], stdout=fh, stderr=subprocess.STDOUT,
                            cwd=REPO).returncode
    return rc, time.perf_counter() - t0


def bench_predict(paths: list[str], folder: Path, s: Settings, workdir: Path) -> list[dict]:
    from wbcnet.export import export_onnx, onnx_backend

    try:
        ckpt, which = resolve_checkpoint(None), "the shipped model"
    except FileNotFoundError:
        ckpt = build_checkpoint(workdir, "mhcnn", s.size("mhcnn"))
        which = "an untrained mhcnn (no shipped model yet; same speed)"
    model, meta = load_model(ckpt)
    onnx_path, _ = export_onnx(ckpt, out=workdir / "predict.onnx")  # never beside the shipped weights
    size, n = meta["img_size"], len(paths)
    print(f"  checkpoint: {which} ({meta['model']}, {size} px)")
    rows = []

    def end_to_end(backend):
        found, _ = expand_inputs([str(folder)])
        out_rows = predict_paths(model, meta, found, batch_size=64, backend=backend, progress=False)
        write_rows(out_rows, meta["classes"], workdir / "predictions.csv")

    torch_label = f"torch ({'bf16' if use_bf16() else 'fp32'}, as predict runs it)"
    backends = {torch_label: None, "onnxruntime": onnx_backend(onnx_path, meta, 64)}
    for label, backend in backends.items():
        sec = median_seconds(lambda: end_to_end(backend), 1, s.predict_repeats)
        rows.append(row(f"predict_paths, {label} backend (list folder, decode, model, CSV)", f"{n / sec:.0f} img/s",
                        f"≥ {TARGET_PREDICT:g} img/s", at_least(n / sec, TARGET_PREDICT, "{:.0f} img/s")))
    for label, extra in (("torch", []), ("onnxruntime", ["--backend", "onnxruntime", "--onnx", str(onnx_path)])):
        log = workdir / f"predict-{label}.log"
        rc, sec = cli_seconds(["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(workdir / "cli.csv"),
                               "--no-progress", *extra], log)
        if rc != 0:  # report it and go on: the other sections' numbers are still worth having
            rows.append(row(f"`wbcnet predict` command, {label} backend", f"failed (exit code {rc}): "
                            f"{log.read_text().strip().splitlines()[-1:]}", f"≥ {TARGET_PREDICT:g} img/s",
                            "gap: command failed"))
            continue
        rows.append(row(f"`wbcnet predict` command, {label} backend, whole process incl. start-up",
                        f"{n / sec:.0f} img/s ({sec:.1f} s)", f"≥ {TARGET_PREDICT:g} img/s",
                        at_least(n / sec, TARGET_PREDICT, "{:.0f} img/s")))

    # What limits it: the two halves on their own.
    sec = median_seconds(lambda: decode_images(paths, size, progress=False), 1, s.predict_repeats)
    rows.append(row(f"decode only (575 px JPEG -> {size} px, {default_workers()} threads)", f"{n / sec:.0f} img/s"))
    images = decode_images(paths, size, progress=False).images
    for label, run in ((torch_label, lambda: predict_logits(model, images, meta["mean"], meta["std"], 64)),
                       ("onnxruntime", lambda: backends["onnxruntime"](images))):
        sec = median_seconds(run, 1, s.predict_repeats)
        rows.append(row(f"model only, {label} (decoded uint8 in memory)", f"{n / sec:.0f} img/s"))
    return rows


# ---------------------------------------------------------------------------------------------
# (d) epoch time with and without the decode cache

def bench_epoch(paths: list[str], s: Settings, workdir: Path, name: str = "mhcnn") -> list[dict]:
    """One training epoch of `name` over `paths`, batches drawn in the same shuffled order, where
    the uint8 batch comes either from the decode cache or from decoding the JPEGs right then."""
    size, workers = s.size(name), default_workers()
    labels = np.array([CLASSES.index(Path(p).parent.name) if Path(p).parent.name in CLASSES else 0 for p in paths])
    bf16 = use_bf16()
    model = make_model(name, size).train()
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    g = torch.Generator().manual_seed(0)
    aug = AugmentConfig()

    def train_step(x_uint8: np.ndarray, y: np.ndarray):
        # The body of train.train_one_epoch: augment, normalise, forward, backward, step.
        x = normalize(augment_batch(torch.from_numpy(x_uint8), aug, g), MEAN, STD)
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = criterion(logits.float(), torch.from_numpy(y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    order = np.random.default_rng(0).permutation(len(paths))
    batches = [np.sort(order[b * s.batch:(b + 1) * s.batch]) for b in range(len(paths) // s.batch)]
    n_images = len(batches) * s.batch

    # The cache as training uses it: written once, then memory-mapped by every epoch and later run.
    t0 = time.perf_counter()
    cached_decode(paths, size, workdir / "cache", workers, progress=False)
    first_decode = time.perf_counter() - t0
    cache = cached_decode(paths, size, workdir / "cache", workers, progress=False).images
    for idx in batches[:2]:  # warm up kernels and allocator before either timed epoch
        train_step(np.ascontiguousarray(cache[idx]), labels[idx])

    def decode_batch(pool, idx):
        return np.stack(list(pool.map(lambda i: load_rgb(paths[i], size).transpose(2, 0, 1), idx)))

    # No cache: every batch decoded from the JPEGs with load_rgb on the same thread pool; the next
    # batch is decoded while this one trains, the most a no-cache loader could overlap.
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool, ThreadPoolExecutor(1) as ahead:
        pending = ahead.submit(decode_batch, pool, batches[0])
        for k, idx in enumerate(batches):
            x = pending.result()
            if k + 1 < len(batches):
                pending = ahead.submit(decode_batch, pool, batches[k + 1])
            train_step(x, labels[idx])
    no_cache = time.perf_counter() - t0

    t0 = time.perf_counter()
    for idx in batches:
        train_step(np.ascontiguousarray(cache[idx]), labels[idx])
    with_cache = time.perf_counter() - t0

    prec = "bf16 + channels_last" if bf16 else "fp32"
    return [row(f"decode {len(paths)} JPEGs into the cache, once (first run only)", f"{first_decode:.1f} s"),
            row(f"epoch, decoded every epoch ({workers} threads, one batch prefetched)",
                f"{no_cache:.1f} s ({n_images / no_cache:.0f} img/s)"),
            row("epoch, from the uint8 cache (memory-mapped)",
                f"{with_cache:.1f} s ({n_images / with_cache:.0f} img/s)"),
            row("cache speed-up per epoch", f"{no_cache / with_cache:.1f}x"),
            row("setup", f"{name} {size} px, batch {s.batch}, {prec}, augmentation on, {n_images} images/epoch")]


# ---------------------------------------------------------------------------------------------
# (e) a real training run: wall time and peak RSS

def run_measured(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run `cmd`; returns (exit code, wall seconds, peak RSS in GB of that process)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
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


def cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a bare | would end the markdown table cell


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
        lines += ["## Targets at a glance", "", "| section | measurement | value | target | verdict |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {t.split(')')[0]}) | " + " | ".join(cell(r[k]) for k in COLUMNS) + " |" for t, r in targets]
        lines += [""]
    for title, note, rows in sections:
        lines += [f"## {title}", "", note, "", "| " + " | ".join(COLUMNS) + " |", "| --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(cell(r[k]) for k in COLUMNS) + " |" for r in rows] + [""]
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
        print(f"  ({took:.0f} s)", flush=True)
        done.append((title, f"{note} This section took {took:.0f} s.", rows))

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
                    "ONNX Runtime: the `wbcnet.export` graph, uint8 in, all cores.",
                    lambda: bench_inference(s, workdir / "b"))
        if "c" in sections or "d" in sections:
            if data is not None and data.is_dir() and not s.quick:
                folder, source = JPEG_CACHE / f"jpeg575-n{s.n_jpeg}", str(data)
            else:
                data, folder, source = SAMPLE, workdir / "jpeg575", "the bundled sample"
            print(f"making (or reusing) {s.n_jpeg} 575 px JPEGs in {folder} ...", flush=True)
            paths = make_jpeg_folder(data, s.n_jpeg, folder)
            note = f"{len(paths)} JPEGs, 575x575, quality 95, Lanczos-upscaled from {source}."
        if "c" in sections:
            section("(c) `wbcnet predict` end to end",
                    f"{note} In-process rows time listing the folder, decoding, the model and writing the CSV "
                    f"(model already loaded), median of {s.predict_repeats} after one warm-up; command rows are "
                    "one run of the whole process.",
                    lambda: bench_predict(paths, folder, s, workdir / "c"))
        if "d" in sections:
            section("(d) Training epoch: decode every epoch vs the uint8 cache",
                    f"{note} Same model, batches, order and training step; only where the uint8 batch comes from "
                    "differs.",
                    lambda: bench_epoch(paths, s, workdir / "d"))
        if "e" in sections:
            section("(e) Training run: wall time and peak RSS",
                    "A real `wbcnet train` in a subprocess; peak RSS is that process's ru_maxrss (os.wait4). A "
                    "short run by default (set with --train-args): its peak RSS is a full run's (same data in "
                    "memory, same model), and the full run's wall time is projected from its mean epoch.",
                    lambda: bench_full_training(train_args, full_epochs, workdir / "e"))
    text = render(info, done, s, argv)
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
