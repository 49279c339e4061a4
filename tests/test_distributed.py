"""`torchrun --nproc-per-node 2 -m wbcnet train ...` on the CPU (gloo), on the bundled sample:
the same command as one process, one run folder, a model as good within noise, and a run
stopped in one process continued by two."""
import csv
import json
import subprocess
import sys

import pytest

from wbcnet.training.classifier import fit

from conftest import SAMPLE, small_config

pytestmark = pytest.mark.slow
# --standalone: a rendezvous on a free local port (a fixed --master-port may be taken; 0 hangs).
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
FLAGS = ["--img-size", "48", "--epochs", "6", "--batch-size", "16", "--seed", "0", "--no-progress", "--patience", "0"]


def _best_val_f1(run) -> float:
    return json.loads((run / "best.json").read_text())["val_macro_f1"]


def _torchrun(args, cwd) -> subprocess.CompletedProcess:
    out = subprocess.run(TORCHRUN + ["-m", "wbcnet", "train", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_two_processes_train_one_run_as_well_as_one(tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    single = tmp_path / "single"
    assert subprocess.run([sys.executable, "-m", "wbcnet", "train", "--data", str(SAMPLE), "--out", str(single),
                           *FLAGS, *cache], capture_output=True, text=True, timeout=180).returncode == 0
    out = _torchrun(["--data", str(SAMPLE), "--out", str(tmp_path / "ddp"), *FLAGS, *cache], tmp_path)
    run = tmp_path / "ddp"
    # One run folder, written by rank 0 alone: nothing else appeared beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ddp", "single"]
    assert (run / "DONE").exists() and (run / "test" / "metrics.json").exists()
    assert out.stdout.count("done: ") == 1 and "data-parallel: 2 processes" in out.stdout
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    # Same split (same seed), half the steps per process: validation macro-F1 within noise of
    # one process's (45 validation cells; a broken run stays near chance, 0.2).
    assert (run / "split.csv").read_text() == (single / "split.csv").read_text()
    assert _best_val_f1(run) > 0.3
    assert abs(_best_val_f1(run) - _best_val_f1(single)) < 0.25


def test_a_run_stopped_in_one_process_is_continued_by_two(tmp_path):
    class Stop(Exception):
        pass

    def stop_after_second(epoch, row):
        if epoch == 1:
            raise Stop

    cfg = small_config(SAMPLE, tmp_path / "run", epochs=4, batch_size=16, img_size=48, cache_dir=str(tmp_path / "c"))
    with pytest.raises(Stop):
        fit(cfg, on_epoch_end=stop_after_second)
    assert not (tmp_path / "run" / "DONE").exists()
    out = _torchrun(["--resume", str(tmp_path / "run")], tmp_path)
    assert "resuming after epoch 2" in out.stdout
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "DONE").exists()
