import pytest

from wbcnet.evaluation.metrics import compute_metrics


def test_metrics_against_hand_computed_values():
    # true:  A A A A B B C C C C
    # pred:  A A A B B C C C A C
    classes = ["A", "B", "C"]
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 2, 2, 2, 0, 2]
    m = compute_metrics(y_true, y_pred, classes)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(7 / 10)
    # recalls: A 3/4, B 1/2, C 3/4
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 0.75) / 3)
    # precisions: A 3/4, B 1/2, C 3/4 ; F1 = same as P=R
    assert m["per_class"]["A"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    assert m["per_class"]["B"]["f1"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((0.75 + 0.5 + 0.75) / 3)
    assert m["weighted_f1"] == pytest.approx((0.75 * 4 + 0.5 * 2 + 0.75 * 4) / 10)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]


def test_a_class_missing_from_the_data_is_reported_not_averaged():
    m = compute_metrics([0, 0, 1], [0, 1, 1], ["A", "B", "C"])
    assert m["absent_classes"] == ["C"]
    assert m["confusion_matrix"][2] == [0, 0, 0]
    # macro-F1 over the classes present: A f1 = 2/3, B f1 = 2/3
    assert m["macro_f1"] == pytest.approx(2 / 3)
