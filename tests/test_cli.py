"""The CLI end to end on the bundled sample cells."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wbcnet.cli.main import main

from conftest import REPO, SAMPLE, write_bad_files


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = main(["train", "--data", str(SAMPLE), "--out", str(out), "--epochs", "3", "--img-size", "64",
               "--batch-size", "32", "--no-cache", "--no-progress", "--seed", "1"])
    assert rc == 0
    return out


def test_train_writes_a_complete_run(trained_run):
    for name in ("config.yaml", "split.csv", "metrics.csv", "best.safetensors", "best.json", "last.safetensors",
                 "last.json", "test/metrics.json", "test/confusion_matrix.png", "test/predictions.csv",
                 "test/classification_report.txt", "test/training_curves.png"):
        assert (trained_run / name).exists(), name
    meta = json.loads((trained_run / "best.json").read_text())
    assert meta["classes"] == ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
    assert {"model", "model_args", "img_size", "mean", "std", "config", "wbcnet_version", "git_commit"} <= set(meta)
    m = json.loads((trained_run / "test" / "metrics.json").read_text())
    for key in ("classes", "n", "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "per_class",
                "confusion_matrix"):
        assert key in m


def test_evaluate_matches_classes_by_name_and_reports_missing(trained_run, tmp_path, capsys):
    data = tmp_path / "eval"
    for cls in ("NEUTROPHIL", "lymphocyte"):
        (data / cls).mkdir(parents=True)
        src = SAMPLE / cls.capitalize()
        for p in sorted(src.glob("*.jpg"))[:5]:
            (data / cls / p.name).write_bytes(p.read_bytes())
    (data / "Platelet").mkdir()
    (data / "Platelet" / "x.jpg").write_bytes((SAMPLE / "Monocyte").glob("*.jpg").__next__().read_bytes())
    rc = main(["evaluate", "--data", str(data), "--checkpoint", str(trained_run), "--out", str(tmp_path / "ev"),
               "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "Platelet" in err and "Basophil" in err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n"] == 10 and sum(map(sum, m["confusion_matrix"])) == 10
    assert (tmp_path / "ev" / "confusion_matrix.png").exists()
    assert (tmp_path / "ev" / "training_curves.png").exists()


def test_plot_confusion_redraws(trained_run, tmp_path):
    assert main(["plot-confusion", str(trained_run), "--out", str(tmp_path / "cm.png")]) == 0
    assert (tmp_path / "cm.png").stat().st_size > 1000


def test_predict_survives_a_folder_of_bad_files(trained_run, tmp_path, capsys):
    folder = tmp_path / "mixed"
    kinds = write_bad_files(folder)
    for p in sorted((SAMPLE / "Eosinophil").glob("*.jpg"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "p.csv"
    rc = main(["predict", str(folder), "--checkpoint", str(trained_run), "--out", str(out), "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(out))}
    for name, kind in kinds.items():
        if kind == "good":
            assert rows[name]["predicted"] and not rows[name]["error"], name
        elif kind == "bad":
            assert rows[name]["error"] and not rows[name]["predicted"], name
            assert err.count(name) == 1, f"{name} should be named once:\n{err}"
        else:
            assert name not in rows and err.count(name) == 1
    assert sum(1 for r in rows.values() if r["predicted"]) == 3 + sum(k == "good" for k in kinds.values())


def test_predict_min_confidence_refers(trained_run, tmp_path):
    out = tmp_path / "p.csv"
    assert main(["predict", str(SAMPLE / "Monocyte"), "--checkpoint", str(trained_run), "--out", str(out),
                 "--min-confidence", "1", "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert {r["predicted"] for r in rows if float(r["confidence"]) < 1} == {"refer"}
    assert any(r["predicted"] == "refer" for r in rows)


@pytest.mark.parametrize("value", ["1.01", "-0.1", "high"])
def test_predict_refuses_a_confidence_that_is_not_one(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as e:  # argparse's own refusal, before the checkpoint is read
        main(["predict", str(SAMPLE / "Monocyte"), "--out", str(tmp_path / "p.csv"), "--min-confidence", value])
    assert e.value.code == 2 and "--min-confidence" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_models_lists_ours(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "mhcnn" in out and "seed-mhcnn" in out


def test_bad_data_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nope: no such folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # a failed start leaves no half-made run folder


def test_demo_writes_metrics_and_matrix(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wbcnet", "demo", "--out", str(tmp_path / "demo"), "--epochs", "2",
                           "--no-progress"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "demo").rglob("metrics.json")) and list((tmp_path / "demo").rglob("confusion_matrix.png"))
    assert str(tmp_path / "demo") in proc.stdout


# Each wrapper's subcommand, and a word of help text that only that subcommand's --help shows.
WRAPPERS = {"train.py": ("train", "--resume"), "evaluate.py": ("evaluate", "--bootstrap"),
            "plot_confusion_matrix.py": ("plot-confusion", "source")}


def test_root_scripts_are_thin_wrappers_of_their_own_subcommand():
    for script, (command, marker) in WRAPPERS.items():
        proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert re.match(rf"usage: \S+ {command} ", proc.stdout), f"{script} does not reach {command}:\n{proc.stdout}"
        others = [m for s, (_, m) in WRAPPERS.items() if s != script]
        words = set(re.findall(r"[\w-]+", proc.stdout))
        assert marker in words and not words & set(others), f"{script} shows another command's help"


def test_evaluate_one_split_of_a_run(trained_run, tmp_path, capsys):
    rc = main(["evaluate", "--data", str(trained_run / "split.csv"), "--split", "test", "--checkpoint",
               str(trained_run), "--out", str(tmp_path / "ev"), "--no-progress", "--no-explain"])
    assert rc == 0
    test_rows = [r for r in csv.DictReader(open(trained_run / "split.csv")) if r["split"] == "test"]
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n"] == len(test_rows)
    assert m == {**m, **{k: json.loads((trained_run / "test" / "metrics.json").read_text())[k]
                         for k in ("accuracy", "confusion_matrix")}}
    assert "calibration: ECE" in capsys.readouterr().out
    assert (tmp_path / "ev" / "report.html").exists()
