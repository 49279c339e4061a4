"""Data-parallel training throughput on this machine: `wbcnet train` with one process and one
core, against `torchrun --standalone --nproc-per-node 2` with one core each (gloo).

    python -m benchmarks.ddp [--data .packed/raabin] [--epochs 2] [--out benchmarks/results/ddp.md]

Images per second are the training epochs' own figure (metrics.csv, img_per_s: every rank's
images), the best of the epochs after the first. Same data, split, seed and batch per process.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], env: dict) -> float:
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / ".packed" / "raabin"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ddp.md"))
    args = ap.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--data", args.data, "--img-size", "112", "--epochs", str(args.epochs), "--batch-size",
                 str(args.batch_size), "--no-progress", "--patience", "0", "--seed", "0", "--cache-dir", f"{tmp}/cache",
                 "--val-frac", "0.1", "--test-frac", "0.05"]
        # Fill the decode cache first so neither timed run decodes.
        run([sys.executable, "-m", "wbcnet", "train", *flags, "--epochs", "1", "--out", f"{tmp}/warm", "--threads", "2"], env)
        for label, cmd in [
            ("1 process, 1 core", [sys.executable, "-m", "wbcnet", "train", *flags, "--threads", "1", "--out", f"{tmp}/one"]),
            ("2 processes (torchrun, gloo), 1 core each",
             [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "wbcnet",
              "train", *flags, "--out", f"{tmp}/two"]),
        ]:
            wall = run(cmd, env)
            run_dir = Path(cmd[cmd.index("--out") + 1])
            epochs = list(csv.DictReader(open(run_dir / "metrics.csv")))
            best = max(float(r["img_per_s"]) for r in (epochs[1:] or epochs))
            rows.append((label, best, wall))
            print(f"{label}: {best:.0f} img/s training, {wall:.0f} s for the command", flush=True)
    from benchmarks.common import git_state, table_lines

    commit = git_state()
    lines = ["# Data-parallel training on this CPU", "",
             f"`python -m benchmarks.ddp --data {args.data} --epochs {args.epochs}` at commit {commit}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; mhcnn at 112 px, batch {args.batch_size} per "
             f"process, bf16 autocast where the CPU has it, OMP_NUM_THREADS=1.", ""]
    lines += table_lines(("training", "img/s", "speed-up", "whole command (s)"),
                         [(label, f"{ips:.0f}", f"{ips / rows[0][1]:.2f}x", f"{wall:.0f}") for label, ips, wall in rows])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
