"""What the benchmarks share: timing, the machine and commit a results page names, markdown tables,
and a `wbcnet train` run that survives being cut short. Each benchmark is its own command
(`python -m benchmarks.NAME`); this module is none."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from wbcnet.models.checkpoint import git_commit

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Timing

def median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# The machine and the commit

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


def cpu_name() -> str:
    return cpu_flags()[0]


def cpu_summary() -> str:
    """The CPU's model name, its core count and whether it has bf16 (AVX-512 BF16 or AMX), for a
    results line."""
    model, flags = cpu_flags()
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return f"{model}, {os.cpu_count()} cores, bf16 {'yes' if bf16 else 'no'}"


def git_state() -> str:
    """The commit checkpoints record (checkpoint.git_commit), and whether the package's sources
    differ from it: the numbers measure the working tree, not necessarily that commit."""
    commit = git_commit() or "unknown"
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return commit
    changed = sorted(line[3:] for line in dirty if line.strip())
    return commit + (f" (with uncommitted changes to {', '.join(changed)})" if changed else "")


def n_to_e(metrics: dict) -> int | None:
    """Neutrophils called eosinophils, from an evaluation's metrics.json: the error that makes an
    eosinophilia out of a normal count (scripts/ship_model.py's cards, benchmarks/pretrain_gain.py)."""
    classes = metrics["classes"]
    if "Neutrophil" not in classes or "Eosinophil" not in classes:
        return None
    return int(metrics["confusion_matrix"][classes.index("Neutrophil")][classes.index("Eosinophil")])


# ---------------------------------------------------------------------------------------------
# Tables

def cell(text) -> str:
    return str(text).replace("|", "\\|")  # a bare | would end the markdown table cell


def table_lines(header, rows, spaced: bool = False) -> list[str]:
    """A markdown table: the header, its rule (`|---|` or, `spaced`, `| --- |`), a line a row."""
    def line(values) -> str:
        return "| " + " | ".join(cell(v) for v in values) + " |"

    rule = ("| " + " | ".join("---" for _ in header) + " |") if spaced else "|" + "---|" * len(header)
    return [line(header), rule] + [line(r) for r in rows]


# ---------------------------------------------------------------------------------------------
# A training run

def train_resumable(cfg: dict, run: Path, env: dict | None = None, echo: str | None = None) -> float:
    """`wbcnet train` with `cfg` (written beside the run as RUN.yaml) into `run`, its output added to
    RUN.log; a run cut short (a device's time ran out) goes on from its last epoch. `echo`: the
    epoch lines are also printed, after that name. Returns the seconds it took; a failed run ends
    the benchmark, naming its log. (A run already DONE is the caller's to keep.)"""
    run.parent.mkdir(parents=True, exist_ok=True)
    cfg_path, log_path = run.parent / f"{run.name}.yaml", run.parent / f"{run.name}.log"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    how = ["--resume", str(run)] if (run / "last.json").exists() else ["--config", str(cfg_path), "--out", str(run)]
    t0 = time.time()
    with open(log_path, "a") as log:  # a resumed run keeps its first part
        proc = subprocess.Popen([sys.executable, "-m", "wbcnet", "train", *how], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if echo and line.startswith(("epoch", "run folder", "images:", "resuming", "early stop", "  ")):
                print(f"  {echo}: {line.rstrip()}", flush=True)
        if proc.wait():
            raise SystemExit(f"{run.name}: wbcnet train failed (exit {proc.returncode}); see {log_path}")
    return time.time() - t0
