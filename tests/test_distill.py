"""`wbcnet train --teacher` (issue 20, lever 3): the student learns from the teacher's answers on
the very views it trains on, at the teacher's resolution; a teacher that can't teach is refused."""
import json

import pytest
import torch

from wbcnet.models import checkpoint as ckpt
from wbcnet.cli.main import main
from wbcnet.training.distill import Teacher
from wbcnet.evaluation.evaluate import evaluate_samples
from wbcnet.training.classifier import fit

from conftest import SAMPLE, folder_state, small_config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 64 px tiny mhcnn trained on the sample, then rewired to call every cell class 0
    (Basophil): a teacher whose answers no label agrees with."""
    root = tmp_path_factory.mktemp("distill")
    run = fit(small_config(SAMPLE, root / "teacher", img_size=64, epochs=1, crop="cell"))
    model, meta = ckpt.load_model(run / "best")
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([8.0, 0, 0, 0, 0]))
    ckpt.save_checkpoint(run / "best", model, meta)
    return run


def test_the_student_learns_what_the_teacher_says(teacher, tmp_path):
    # All of the loss from the teacher: the 48 px student must learn "Basophil" for every cell,
    # which the labels (60 of 300 basophils) never teach.
    run = fit(small_config(SAMPLE, tmp_path / "student", epochs=3, crop="cell", teacher=str(teacher),
                           distill_weight=1.0, distill_temperature=1.0, lr=1e-2))
    meta = json.loads((run / "best.json").read_text())
    assert meta["img_size"] == 48 and meta["preprocess"]["crop"] == "cell"
    record = meta["distilled_from"]
    assert record["img_size"] == 64 and record["weight"] == 1.0
    assert record["weights_sha256"] == json.loads((teacher / "best.json").read_text())["weights_sha256"]
    rows = (run / "test" / "predictions.csv").read_text().splitlines()
    predicted = [r.split(",")[2] for r in rows[1:]]
    assert predicted.count("Basophil") / len(predicted) > 0.9, predicted


def test_without_the_teacher_the_same_run_learns_the_labels(tmp_path):
    run = fit(small_config(SAMPLE, tmp_path / "plain", epochs=3, crop="cell", lr=1e-2))
    predicted = [r.split(",")[2] for r in (run / "test" / "predictions.csv").read_text().splitlines()[1:]]
    assert predicted.count("Basophil") / len(predicted) < 0.6


def test_the_loss_mixes_labels_and_teacher():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    hard = torch.tensor(1.7)
    assert Teacher(None, None, 0.0, 2.0).loss(s, t, hard) == hard
    assert Teacher(None, None, 1.0, 2.0).loss(t, t, hard).abs() < 1e-6  # agreeing with the teacher costs nothing
    assert Teacher(None, None, 1.0, 2.0).loss(s, t, hard) > 0


def test_a_teacher_for_other_inputs_is_refused_in_one_line(teacher, tmp_path, capsys):
    before = folder_state(teacher)
    code = main(["train", "--data", str(SAMPLE), "--teacher", str(teacher), "--img-size", "48", "--epochs", "1",
                 "--no-cache", "--no-progress", "--out", str(tmp_path / "whole")])  # whole pictures, not cell crops
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "teacher was trained on other inputs" in err[0], err
    assert not (tmp_path / "whole").exists() and folder_state(teacher) == before


def test_distill_settings_are_checked():
    with pytest.raises(Exception, match="distill_weight"):
        small_config(SAMPLE, "x", distill_weight=1.5).validate()
