"""wbcnet pretrain (issue 20): SimCLR on the bundled sample's cells, the backbone's files, and
`train --pretrained` starting from them, strictly, or refusing in one line."""
import json
import subprocess
import sys

import pytest
import torch

from wbcnet.models.backbone import backbone_state
from wbcnet.cli.main import main
from wbcnet.training.pretrain import pretrain
from wbcnet.training.pretrain_config import PretrainConfig
from wbcnet.training.classifier import build_model, fit
from wbcnet.core.weights import load_tensors, sha256_file

from conftest import REPO, SAMPLE, folder_state, small_config

pytest.importorskip("lightly")

TINY = {"widths": [8, 16, 32, 48], "heads": 2, "depth": 1}
FIELDS = REPO / "tests" / "data" / "fields"  # six BCCD fields: their white cells, cut out by the finder
RECIPE = ["--epochs", "2", "--warmup-epochs", "0.5", "--batch-size", "32", "--threads", "1", "--no-cache", "--no-progress"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A backbone of the tiny mhcnn at 64 px, pretrained 2 epochs on the sample's 300 cells and the
    white cells of six fields."""
    root = tmp_path_factory.mktemp("pretrain")
    (root / "tiny.yaml").write_text(f"model: mhcnn\nmodel_args: {json.dumps(TINY)}\nimg_size: 64\n")
    out = root / "bb"
    assert main(["pretrain", "--config", str(root / "tiny.yaml"), "--data", f"sample={SAMPLE}", "--unlabelled",
                 f"bccd={FIELDS}", "--out", str(out), *RECIPE]) == 0
    return out


def test_pretrain_writes_the_backbone_and_what_it_is_for(backbone):
    assert {"backbone.safetensors", "backbone.json", "loss.png", "history.csv", "last.json"} <= \
        {p.name for p in backbone.iterdir()}
    meta = json.loads((backbone / "backbone.json").read_text())
    assert meta["weights_sha256"] == sha256_file(backbone / "backbone.safetensors")
    assert meta["model"] == "mhcnn" and meta["img_size"] == 64 and meta["model_args"]["widths"] == TINY["widths"]
    assert meta["preprocess"] == {"crop": "none", "context": 1.5}
    sample, fields = meta["sources"]
    assert sample["cells"] == 300 and fields["fields"] == 6 and fields["cells"] >= 5
    assert meta["cells"] == sample["cells"] + fields["cells"] and meta["method"] == "simclr"
    assert meta["recipe"]["epochs"] == 2 and meta["recipe"]["temperature"] == 0.2 and meta["seed"] == 0
    assert meta["recipe"]["warmup_epochs"] == 0.5
    tensors = load_tensors(backbone / "backbone.safetensors")
    assert "stem.0.0.weight" in tensors and not any(k.startswith("fc.") for k in tensors)  # no classifier
    assert len((backbone / "history.csv").read_text().splitlines()) == 3


def test_train_pretrained_starts_from_the_backbone(backbone, tmp_path):
    cfg = small_config(SAMPLE, tmp_path / "run", img_size=64, epochs=1, model_args=dict(TINY), pretrained=str(backbone))
    tensors = load_tensors(backbone / "backbone.safetensors")
    model = build_model(cfg, 5)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in tensors.items())  # every backbone tensor, the first conv too
    assert set(own) - set(tensors) == {"fc.weight", "fc.bias"}  # the head alone starts fresh
    scratch = build_model(small_config(SAMPLE, tmp_path / "x", img_size=64, model_args=dict(TINY)), 5)
    assert not torch.equal(scratch.state_dict()["stem.0.0.weight"], tensors["stem.0.0.weight"])
    run = fit(cfg, evaluate=False)
    best = json.loads((run / "best.json").read_text())
    assert best["config"]["pretrained"] == str(backbone)
    assert best["pretrained"]["weights_sha256"] == sha256_file(backbone / "backbone.safetensors")
    assert best["mean"] == json.loads((backbone / "backbone.json").read_text())["mean"]


def test_a_backbone_for_another_model_or_input_is_refused_in_one_line(backbone, tmp_path, capsys):
    before = folder_state(tmp_path)
    base = ["train", "--data", str(SAMPLE), "--pretrained", str(backbone), "--out", str(tmp_path / "run")]
    assert main(base + ["--img-size", "64"]) == 2  # the default mhcnn, other widths
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model_args differ" in err and "widths [8, 16, 32, 48]" in err
    assert main(base) == 2  # 112 px
    assert "64 px" in capsys.readouterr().err
    assert folder_state(tmp_path) == before and not (tmp_path / "run").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("backbone.json", "backbone.safetensors"):
        (bad / name).write_bytes((backbone / name).read_bytes())
    raw = bytearray((bad / "backbone.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (bad / "backbone.safetensors").write_bytes(bytes(raw))
    cfg = small_config(SAMPLE, tmp_path / "run", img_size=64, model_args=dict(TINY), pretrained=str(bad))
    with pytest.raises(Exception, match="SHA-256"):
        build_model(cfg, 5)


def test_same_command_same_backbone_and_a_killed_run_resumes_exactly(backbone, tmp_path):
    cfg = PretrainConfig(out=str(tmp_path / "bb"), data=[f"sample={SAMPLE}"], unlabelled=[f"bccd={FIELDS}"],
                         model_args=dict(TINY), img_size=64,
                         epochs=2, warmup_epochs=0.5, batch_size=32, threads=1, cache_dir=None, progress=False)

    def kill(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, on_epoch_end=kill)
    assert (tmp_path / "bb" / "last.json").exists() and not (tmp_path / "bb" / "backbone.json").exists()
    with pytest.raises(Exception, match="--resume"):
        pretrain(cfg)  # a new run refuses the folder
    with pytest.raises(Exception, match="other settings"):
        pretrain(PretrainConfig(**{**cfg.__dict__, "temperature": 0.5}), resume=True)
    pretrain(cfg, resume=True)
    assert sha256_file(tmp_path / "bb" / "backbone.safetensors") == sha256_file(backbone / "backbone.safetensors")
    with pytest.raises(Exception, match="finished"):
        pretrain(cfg, resume=True)


def test_backbone_state_leaves_out_the_classifier():
    model = build_model(small_config(SAMPLE, "x", model_args=dict(TINY)), 3)
    assert set(model.state_dict()) - set(backbone_state(model)) == {"fc.weight", "fc.bias"}


def test_without_lightly_pretrain_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lightly" else real(name, *a))
    assert main(["pretrain", "--data", f"s={SAMPLE}", "--out", str(tmp_path / "bb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err and "lightly" in err
    assert not (tmp_path / "bb").exists()


def test_the_linear_probe_scores_the_backbone_beside_its_random_start(backbone, tmp_path):
    import csv

    from benchmarks.probe_backbone import main as probe_main

    pictures = sorted(SAMPLE.rglob("*.jpg"))
    with open(tmp_path / "split.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group", "split", "source"])
        for i, p in enumerate(pictures):
            w.writerow([p, p.parent.name, p.stem, "test" if i % 3 == 0 else "train", ("raabin", "pbc")[i % 2]])
    out = tmp_path / "probe.md"
    assert probe_main(["--backbone", str(backbone), "--split", str(tmp_path / "split.csv"), "--bccd", str(SAMPLE),
                       "--shots", "3", "--draws", "2", "--threads", "1", "--cache-dir", str(tmp_path / "c"),
                       "--out", str(out)]) == 0
    rows = [r for r in out.read_text().splitlines() if r.startswith("| random") or r.startswith("| SimCLR")]
    assert len(rows) == 4
    for row in rows:
        scores = [float(v) for cell in row.split("|")[3:-1] for v in cell.split("/")]
        assert len(scores) == 6 and all(0 <= v <= 1 for v in scores)
    # the backbone's weights were loaded: its features score otherwise than the random start's
    assert [r.split("|")[3:] for r in rows[:2]] != [r.split("|")[3:] for r in rows[2:]]


def test_a_bad_recipe_is_refused_in_one_line_before_any_cell_is_read(tmp_path, capsys):
    for flag, value, says in (("--warmup-epochs", "-1", "0 or more"), ("--temperature", "0", "above 0"),
                              ("--batch-size", "1", "at least 2 cells")):
        assert main(["pretrain", "--data", f"s={SAMPLE}", "--out", str(tmp_path / "bb"), flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err and says in err, err
    assert not (tmp_path / "bb").exists()


def test_pretrain_help_does_not_import_torch():
    code = ("import sys\nfrom wbcnet.cli.main import main\ntry:\n    main(['pretrain', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
