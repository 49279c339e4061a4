"""The numbers behind report.html: bootstrap intervals, confusions, calibration, Grad-CAM maps."""
import numpy as np
import pytest
import torch

from wbcnet.evaluation import analysis
from wbcnet.inference import calibration as cal, explain
from wbcnet.evaluation.metrics import compute_metrics
from wbcnet.models import create_model

CLASSES = ["A", "B", "C"]


def noisy_predictions(n, accuracy=0.8, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    wrong = rng.random(n) > accuracy
    return y, np.where(wrong, (y + rng.integers(1, 3, n)) % 3, y)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n():
    widths = []
    for n in (100, 2500):
        y, p = noisy_predictions(n)
        point = compute_metrics(y, p, CLASSES)
        ci = analysis.bootstrap_ci(y, p, CLASSES, n_resamples=500, seed=3)
        assert ci["n_resamples"] == 500 and ci["seed"] == 3
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            lo, hi = ci[key]
            assert lo <= point[key] <= hi, key
        for c in CLASSES:
            for m in ("precision", "recall", "f1"):
                lo, hi = ci["per_class"][c][m]
                assert lo <= point["per_class"][c][m] <= hi, (c, m)
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    # Width shrinks like 1/sqrt(n): 25x the cells, about a fifth of the width.
    assert widths[1] < widths[0] / 3


def test_bootstrap_is_reproducible_and_matches_sklearn_on_each_resample():
    y, p = noisy_predictions(300, seed=1)
    assert analysis.bootstrap_ci(y, p, CLASSES, 200, seed=5) == analysis.bootstrap_ci(y, p, CLASSES, 200, seed=5)
    cms = analysis.bootstrap_confusions(y, p, 3, n_resamples=4, seed=9)
    scores = analysis._scores_from_confusions(cms)
    # Replay the same resamples and score them with the sklearn-based compute_metrics.
    rng = np.random.default_rng(9)
    for b in range(4):
        idx = rng.integers(0, len(y), len(y))
        m = compute_metrics(y[idx], p[idx], CLASSES)
        assert cms[b].tolist() == m["confusion_matrix"]
        assert scores["accuracy"][b] == pytest.approx(m["accuracy"])
        assert scores["macro_f1"][b] == pytest.approx(m["macro_f1"])
        assert scores["balanced_accuracy"][b] == pytest.approx(m["balanced_accuracy"])


def test_top_confusions_on_a_hand_made_matrix():
    cm = [[5, 3, 0],
          [1, 7, 4],
          [0, 3, 9]]
    top = analysis.top_confusions(cm, CLASSES, k=3)
    # 4 (B->C), then the tie of 3s in class order: A->B before C->B.
    assert [(t["true"], t["predicted"], t["count"]) for t in top] == [("B", "C", 4), ("A", "B", 3), ("C", "B", 3)]
    assert top[0]["share_of_true"] == pytest.approx(4 / 12, abs=1e-4)
    assert analysis.top_confusions(np.eye(3, dtype=int) * 5, CLASSES) == []


def test_coverage_curve_keeps_the_most_confident_first():
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 1, 0])
    conf = np.array([0.9, 0.4, 0.8, 0.6])  # order kept: 0 (right), 2 (right), 3 (wrong), 1 (wrong)
    curve = analysis.coverage_curve(y, p, conf)
    assert curve["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert curve["accuracy"] == pytest.approx([1, 1, 2 / 3, 0.5])
    assert analysis.coverage_table(curve, (1.0, 0.5)) == [
        {"coverage": 1.0, "accuracy": 0.5, "min_confidence": 0.4},
        {"coverage": 0.5, "accuracy": 1.0, "min_confidence": 0.8}]


def test_ece_by_hand():
    # Top-label confidences 0.95, 0.95 (bin (14/15, 1]) one right, one wrong; 0.5, 0.5 (bin (7/15, 8/15]) both right.
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.5, 0.5], [0.5, 0.5]])
    labels = np.array([0, 1, 0, 0])
    # bin 1: |0.5 - 0.95| * 2/4 ; bin 2: |1.0 - 0.5| * 2/4
    assert cal.expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.45 + 0.5 * 0.5)
    b = cal.reliability_bins(probs, labels)
    assert sum(b["count"]) == 4 and b["count"][14] == 2 and b["count"][7] == 2
    # A confidence exactly on a bin edge belongs to the bin it closes: (lo, hi].
    edge = np.array([[0.2, 0.8], [0.2, 0.8]])
    assert cal.reliability_bins(edge, np.array([1, 1]))["count"][11] == 2  # 0.8 = 12/15 closes bin 11


def test_temperature_scaling_fixes_an_over_confident_model():
    rng = np.random.default_rng(0)
    n, k = 4000, 5
    true_logits = rng.normal(0, 1.5, (n, k))
    true_logits[np.arange(n), rng.integers(0, k, n)] += 1.5
    # Labels drawn from the true probabilities, then the model reports logits 3x too sharp.
    u = rng.random(n)[:, None]
    labels = (cal.softmax(true_logits).cumsum(1) < u).sum(1)
    logits = 3.0 * true_logits
    t = cal.fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    s = cal.calibration_summary(logits, labels, t)
    assert s["nll_after"] < s["nll_before"]
    assert s["ece_after"] < s["ece_before"] / 2
    assert "ECE" in cal.format_summary(s)


def test_fit_temperature_is_robust():
    assert cal.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    assert cal.fit_temperature(np.array([[np.nan, 1.0]]), np.array([0])) == 1.0
    # Perfectly separable data wants T -> 0: the bound holds it, and it still beats T = 1.
    logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    t = cal.fit_temperature(logits, np.array([0, 1]))
    assert 0.05 <= t < 1 and cal.nll(logits, np.array([0, 1]), t) < cal.nll(logits, np.array([0, 1]))


@pytest.mark.parametrize("name,size,kw", [("mhcnn", 64, {"img_size": 64}), ("resnet18", 64, {}),
                                          ("seed-mhcnn", 120, {}), ("vit_tiny_patch16_224", 64, {"img_size": 64})])
def test_grad_cam_maps_for_each_model_family(name, size, kw):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kw).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # as an EMA copy: the maps must not depend on trainable weights
    images = np.random.default_rng(0).integers(0, 255, (2, 3, size, size), dtype=np.uint8)
    maps = explain.explain_images(model, images, [0.5] * 3, [0.25] * 3)
    assert maps["Grad-CAM"].shape == (2, size, size)
    assert maps["Grad-CAM"].min() >= 0 and maps["Grad-CAM"].max() <= 1
    assert ("attention" in maps) == (name == "mhcnn")
    if name == "mhcnn":
        assert maps["attention"].shape == (2, size, size)
        assert maps["attention"].min() == pytest.approx(0.0) and maps["attention"].max() == pytest.approx(1.0)
        assert (maps["attention_peak"] >= 1.0).all()  # the largest of T weights summing to 1 is >= 1/T
    assert all(p.grad is None for p in model.parameters())
