"""The benchmarks run the package's own code (no private copies of the training step, bf16
detection, core counting or git state), and each section still runs."""
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE

from benchmarks import bench


def test_bench_uses_the_package_helpers():
    import wbcnet.models.checkpoint
    import wbcnet.data.cache
    import wbcnet.inference.runner
    import wbcnet.training.classifier

    assert bench.train_step is wbcnet.training.classifier.train_step
    assert bench.train_one_epoch is wbcnet.training.classifier.train_one_epoch
    assert bench.use_bf16 is wbcnet.inference.runner.use_bf16
    assert bench.predict_logits is wbcnet.inference.runner.predict_logits
    assert bench.default_workers is wbcnet.data.cache.default_workers
    assert bench.git_commit is wbcnet.models.checkpoint.git_commit
    assert bench.training_parts is wbcnet.training.classifier.training_parts
    source = Path(bench.__file__).read_text()
    for copy in ("loss.backward()", "optimizer.step()", "sched_getaffinity", "rev-parse", "CrossEntropyLoss",
                 "EMA(", "build_optimizer", "lr_at("):
        assert copy not in source, f"benchmarks/bench.py has its own copy of {copy!r}"


def test_benchmarks_use_only_trains_public_parts():
    """training/classifier.py's __all__ is what the benchmarks may use; its insides (_fit, EMA, make_split, ...) are not."""
    import re

    import wbcnet.training.classifier

    for name in ("bench.py", "ablation.py", "backbones.py"):
        source = (REPO / "benchmarks" / name).read_text()
        for block in re.findall(r"from wbcnet\.training\.classifier import ([^\n]+)", source):
            used = {n.strip().split(" as ")[0] for n in block.strip("()").split(",")}
            assert used <= set(wbcnet.training.classifier.__all__), (name, used - set(wbcnet.training.classifier.__all__))


def test_training_parts_are_the_ones_fit_uses(monkeypatch):
    import numpy as np
    import torch

    from wbcnet.training.config import TrainConfig
    from wbcnet.training.classifier import training_parts

    labels = np.array([0] * 12 + [1] * 4)
    cfg = TrainConfig(model="mhcnn", img_size=32, batch_size=4, epochs=3, balance="weighted_loss", progress=False,
                      model_args={"widths": [8, 8, 8, 8], "heads": 1, "depth": 1})
    parts = training_parts(cfg, 2, labels)
    assert parts.criterion.weight is not None and float(parts.criterion.weight[1]) > float(parts.criterion.weight[0])
    assert parts.ema is not None and parts.schedule.steps_per_epoch == 4 and parts.schedule.total_steps == 12
    assert parts.schedule.lr(0) < parts.schedule.lr(parts.schedule.warmup_steps) == cfg.lr
    assert isinstance(parts.optimizer, torch.optim.AdamW)
    again = training_parts(cfg, 2, labels)  # seeded: the same initial weights
    assert all(torch.equal(a, b) for a, b in zip(parts.model.state_dict().values(), again.model.state_dict().values()))


def test_checkpoint_and_training_sections(tmp_path):
    s = bench.QUICK
    ckpt = bench.build_checkpoint(tmp_path, "mhcnn", 64)
    _, meta = bench.load_model(ckpt)
    assert (meta.img_size, meta.classes) == (64, bench.CLASSES)
    assert bench.training_img_per_s("mhcnn", 64, False, s) > 0
    paths = bench.make_jpeg_folder(SAMPLE, 16, tmp_path / "jpeg", side=160)
    assert len(paths) == 16 and len({Path(p).parent.name for p in paths}) == 5
    rows = bench.bench_epoch(paths, s, tmp_path / "d")
    assert "batches were not in the recorded order" not in rows[-1]["value"]
    assert all("img/s" in r["value"] for r in rows[1:3])


@pytest.mark.slow
def test_predict_section_runs_the_command(tmp_path):
    s = replace(bench.QUICK, command_warmup=0)
    paths = bench.make_jpeg_folder(SAMPLE, 4, tmp_path / "jpeg")
    rows = bench.bench_predict(paths, tmp_path / "jpeg", s, tmp_path / "c")
    values = {r["measurement"]: r["value"] for r in rows}
    assert not any("failed" in v for v in values.values()), values
    assert sum("whole process incl. start-up" in m for m in values) == 2
    assert any(m.startswith("`wbcnet predict one.jpg`") for m in values)
