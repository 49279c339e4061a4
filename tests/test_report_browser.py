"""report.html: everything an evaluation promises is written, and it renders in a real browser.

The evaluation is of a tiny random mhcnn on the bundled sample (300 cells at 64 px), so it takes
seconds. The browser test is tests/browser.py's (skips without Chromium, except under .ci/run).
"""
import json
import re

import pytest
import torch

from wbcnet.models import checkpoint as ckpt
from wbcnet.models.checkpoint import load_model
from wbcnet.evaluation.evaluate import evaluate_folder
from wbcnet.models import create_model

from browser import chrome, console_errors, page_state
from conftest import SAMPLE

EXPECTED_PNGS = ["confusion_matrix.png", "per_class.png", "reliability.png", "coverage.png", "error_gallery.png",
                 "explain_by_class.png", "explain_errors.png"]


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    model = create_model("mhcnn", num_classes=5, img_size=64)
    classes = sorted(d.name for d in SAMPLE.iterdir() if d.is_dir())
    meta = ckpt.new_meta(classes, "mhcnn", {"img_size": 64}, 64, [0.6, 0.55, 0.65], [0.2, 0.2, 0.2],
                         temperature=1.5, seed=0)
    ckpt.save_checkpoint(tmp / "run" / "best", model, meta)
    (tmp / "run" / "metrics.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,val_macro_f1,lr,epoch_s,img_per_s\n"
        "1,1.6,0.2,1.5,0.3,0.25,1e-3,1,100\n2,1.2,0.5,1.3,0.45,0.4,5e-4,1,100\n")
    model, meta = load_model(tmp / "run")
    out = tmp / "eval"
    result = evaluate_folder(model, meta, SAMPLE, out, run_dir=tmp / "run", progress=False)
    return out, result


def test_evaluation_writes_metrics_figures_and_an_offline_report(evaluation):
    out, result = evaluation
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("classes", "n", "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "per_class",
                "confusion_matrix", "ci", "top_confusions", "ece"):
        assert key in metrics, key
    assert metrics["n"] == 300
    assert metrics["ci"]["n_resamples"] == 1000 and metrics["ci"]["seed"] == 0
    assert metrics["calibration"]["temperature"] == 1.5
    for png in EXPECTED_PNGS + ["training_curves.png"]:
        assert (out / png).stat().st_size > 1000, png
    html = (out / "report.html").read_text()
    # Self-contained: no address outside the file, no script.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert "<script" not in html.lower()
    assert html.count('src="data:image/png;base64,') == len(EXPECTED_PNGS) + 1
    assert "1000 resamples" in html


def test_report_renders_in_headless_chromium(evaluation, tmp_path):
    out, _ = evaluation
    with chrome(tmp_path / "profile") as driver:
        driver.get((out / "report.html").resolve().as_uri())
        state = page_state(driver)
        assert state["ready"] == "complete"
        assert state["title"].startswith("wbcnet report")
        assert len(state["images"]) == len(EXPECTED_PNGS) + 1
        broken = [alt for alt, complete, width in state["images"] if not (complete and width > 0)]
        assert not broken, f"images that did not load: {broken}"
        assert not console_errors(driver)
        driver.save_screenshot(str(out / "report_screenshot.png"))
