"""wbcnet tune: two tiny trials on SQLite, continued by a second run of the same command; its
best config trains; bad search spaces fail before any trial."""
import csv
import json

import pytest
import yaml

from wbcnet.cli.main import main
from wbcnet.training.config import TrainConfig
from wbcnet.training.tune import read_space

from conftest import SAMPLE

pytest.importorskip("optuna")

SPACE = {"lr": {"low": 1.0e-3, "high": 5.0e-3, "log": True}, "model_args.depth": {"low": 1, "high": 2},
         "model_args.widths": {"choices": [[8, 16, 32, 48], [8, 16, 24, 48]]}, "augment.hed": {"low": 0.0, "high": 0.1}}


@pytest.fixture
def base(tmp_path):
    cfg = {"data": str(SAMPLE), "img_size": 48, "batch_size": 16, "epochs": 30, "cache_dir": str(tmp_path / "cache"),
           "seed": 7, "model_args": {"widths": [8, 16, 32, 48], "heads": 2, "depth": 1}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return tmp_path


def _tune(tmp, trials: int) -> int:
    return main(["tune", "--config", str(tmp / "base.yaml"), "--space", str(tmp / "space.yaml"), "--trials", str(trials),
                 "--epochs", "2", "--storage", f"sqlite:///{tmp / 'db' / 'tune.db'}", "--study", "tiny",
                 "--out", str(tmp / "out")])


def test_two_trials_then_the_same_command_continues_the_study(base, capsys):
    assert _tune(base, 2) == 0
    rows = list(csv.DictReader(open(base / "out" / "trials.csv")))
    assert [r["state"] for r in rows] == ["complete", "complete"]
    assert all(r["epochs"] == "2" for r in rows)  # validation macro-F1 reported after every epoch
    # The best config is a config: the base with the best trial's settings and the base's epochs.
    best = TrainConfig.from_yaml(base / "out" / "best.yaml")
    summary = json.loads((base / "out" / "summary.json").read_text())
    assert best.epochs == 30 and best.out is None
    assert best.lr == pytest.approx(summary["best"]["settings"]["lr"])
    assert best.model_args["widths"] == summary["best"]["settings"]["model_args.widths"]
    assert best.model_args["heads"] == 2  # untouched settings stay the base's
    assert summary["best"]["val_macro_f1"] == pytest.approx(max(float(r["val_macro_f1"]) for r in rows), abs=1e-4)
    html = (base / "out" / "tune.html").read_text()
    assert "history.png" in summary["figures"] and "<img" in html

    # Run again with a higher target: the study in SQLite continues, it does not start over.
    assert _tune(base, 3) == 0
    assert "2 trials finished already" in capsys.readouterr().out
    rows = list(csv.DictReader(open(base / "out" / "trials.csv")))
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert rows[2]["lr"] not in (rows[0]["lr"], rows[1]["lr"])  # not the first draws again


@pytest.mark.parametrize("space, message", [
    ({"learning_rate": {"low": 0.1, "high": 1}}, "learning_rate is not a training setting"),
    ({"augment.nope": {"low": 0, "high": 1}}, "augment.nope is not a training setting"),
    ({"lr": {"low": 0.1, "high": 0.01}}, "needs low < high"),
    ({"lr": {"choices": []}}, "needs low < high"),
])
def test_a_bad_search_space_is_refused_before_any_trial(tmp_path, space, message):
    from wbcnet.core.errors import WbcnetError

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(WbcnetError, match=message):
        read_space(tmp_path / "s.yaml")


def test_the_default_space_is_valid():
    from wbcnet.training.tune import DEFAULT_SPACE

    assert "lr" in read_space(DEFAULT_SPACE)


def test_choices_come_back_as_the_values_they_were():
    from wbcnet.training.tune import settings_of

    space = {"optimizer": {"choices": ["adamw", "sgd"]}, "model_args.widths": {"choices": [[8, 16, 32, 48]]},
             "lr": {"low": 1e-3, "high": 1e-2}}
    params = {"optimizer": '"sgd"', "model_args.widths": "[8, 16, 32, 48]", "lr": 0.002}
    assert settings_of(params, space) == {"optimizer": "sgd", "model_args.widths": [8, 16, 32, 48], "lr": 0.002}
