"""The records of core/results.py: each has one CSV row per table, one JSON, and the API's model is
built from it (serve/schemas.py)."""
import json

import numpy as np
import pytest

from wbcnet.inference.runner import Predictions
from wbcnet.core.results import CellResult, ClassCount, CountResult, Differential, EvalResult, FieldResult

CLASSES = ["Basophil", "Eosinophil", "Lymphocyte"]


def predictions(shift=True):
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32)
    return Predictions(np.log(probs), probs, 1.0, np.array([3.14159, 42.0]) if shift else None,
                       np.array([False, True]) if shift else None)


def test_a_cell_from_predictions_and_its_rows():
    pred = predictions()
    referred = pred.referred(0.6)
    a, b = (CellResult.from_predictions("x.jpg", pred, j, referred, CLASSES, cell_found=j == 0) for j in (0, 1))
    assert (a.class_name, a.refer, a.unfamiliar, a.predicted, a.flag) == ("Eosinophil", False, False, "Eosinophil", "")
    assert (b.class_name, b.refer, b.unfamiliar, b.predicted, b.flag) == ("Basophil", True, True, "refer", "refer")
    assert a.to_row(CLASSES, "predict") == {
        "path": "x.jpg", "predicted": "Eosinophil", "confidence": "0.7000", "p_Basophil": "0.1000",
        "p_Eosinophil": "0.7000", "p_Lymphocyte": "0.2000", "cell_found": "yes", "shift_score": "3.14",
        "unfamiliar": "no", "error": ""}
    assert set(a.to_row(CLASSES, "predict")) == set(CellResult.columns("predict", CLASSES, shift=True))
    bad = CellResult("y.jpg", error="empty file (0 bytes)")
    assert bad.to_row(CLASSES, "predict") == {"path": "y.jpg", "predicted": "", "confidence": "",
                                              "error": "empty file (0 bytes)"}
    assert bad.to_row(CLASSES, "count") == {"file": "y.jpg", "predicted": "", "confidence": "",
                                            "flag": "unreadable: empty file (0 bytes)"}
    assert bad.to_dict()["name"] == "y.jpg" and "class" not in bad.to_dict() and not bad.counted


def test_a_cell_in_a_field_and_its_json():
    pred = predictions(shift=False)
    c = CellResult.from_predictions("f.jpg", pred, 0, pred.referred(0.0), CLASSES, box=(1, 2, 30, 40), edge=True)
    row = c.to_row(CLASSES, "count")
    assert (row["x0"], row["y1"], row["flag"], row["predicted"]) == (1, 40, "edge", "Eosinophil")
    assert "shift_score" not in row and "unfamiliar" not in row
    d = c.to_dict()
    assert d["class"] == "Eosinophil" and d["box"] == [1, 2, 30, 40] and d["edge"] and not d["counted"]
    assert d["probabilities"]["Eosinophil"] == 0.7 and d["unfamiliar"] is None
    json.dumps(d)  # plain numbers only


def test_an_evaluated_cell_keeps_its_class_when_unfamiliar():
    c = CellResult("z.jpg", "Lymphocyte", 0.9, {"Basophil": 0.05, "Eosinophil": 0.05, "Lymphocyte": 0.9},
                   unfamiliar=True, shift_score=99.0, true_class="Basophil")
    assert c.to_row(CLASSES, "evaluate") == {"path": "z.jpg", "true": "Basophil", "predicted": "Lymphocyte",
                                             "confidence": "0.9000", "p_Basophil": "0.0500", "p_Eosinophil": "0.0500",
                                             "p_Lymphocyte": "0.9000", "shift_score": "99.00", "unfamiliar": "yes"}


def count_result():
    diff = Differential(1, 0, 1, {c: ClassCount(int(c == "Basophil"), 100.0 * (c == "Basophil"), 0.0, 100.0, 0)
                                  for c in CLASSES})
    cells = [CellResult("a.jpg", "Basophil", 0.9, {c: 0.9 if c == "Basophil" else 0.05 for c in CLASSES},
                        box=(0, 0, 5, 5)),
             CellResult("a.jpg", "Lymphocyte", 0.8, {c: 0.8 if c == "Lymphocyte" else 0.1 for c in CLASSES},
                        box=(5, 5, 9, 9), edge=True)]
    fields = [FieldResult("a.jpg", 10, 10, cells), FieldResult("b.jpg", error="truncated"),
              FieldResult("c.jpg", 10, 10)]
    return CountResult(fields, diff, CLASSES, 0.5, True, "ckpt.safetensors", target=5, model="fast")


def test_a_count_summary_is_count_json():
    r = count_result()
    s = r.summary()
    assert s == {"fields": 3, "unreadable": [["b.jpg", "truncated"]], "fields_without_cells": 1, "cells_found": 2,
                 "rejected": 0, "implausible_fields": [], "scale_unsure_fields": [],
                 "counted": 1, "referred": 0, "edge_skipped": 1, "min_confidence": 0.5, "shift_check": True,
                 "model": "fast", "checkpoint": "ckpt.safetensors", "finder": "shipped", "classes": CLASSES,
                 "target": {"cells": 5, "reached": False}, "warnings": []}
    d = r.to_dict()
    assert "checkpoint" not in d and d["model"] == "fast"  # a server's paths are not the client's business; the name is
    assert d["fields"][0]["cells"][1]["flag"] == "edge" and d["differential"]["classes"]["Basophil"]["count"] == 1
    assert (d["cells_found"], d["counted"], d["target_reached"]) == (2, 1, False)
    assert r.differential.to_rows()[0] == ["Basophil", 1, "100.0", "0.0", "100.0", 0]


def test_an_evaluation_reads_like_metrics_json():
    r = EvalResult(CLASSES, 2, 0.5, 0.5, 0.4, 0.4, {}, [[1, 0, 0], [0, 0, 1], [0, 0, 0]], ["Lymphocyte"],
                   ci={"accuracy": [0.1, 0.9]}, ece=0.1, shift_scores=np.array([1.0, 2.0]))
    d = r.to_dict()
    assert "shift_scores" not in d and "cells" not in d and "shift" not in d and "cell_not_found" not in d
    assert list(d)[:3] == ["classes", "n", "accuracy"] and d["ci"]["accuracy"] == [0.1, 0.9]
    assert r.macro_f1 == 0.4 and r.shift is None and r.interval("accuracy") == (0.1, 0.9)
    with pytest.raises(TypeError):  # read by attribute: records are not dicts (issue 29)
        r["macro_f1"]
    row = r.summary_row("lab")
    assert row["accuracy_ci"] == "0.1000-0.9000" and row["set"] == "lab" and set(row) == set(r.SUMMARY_COLUMNS)


def test_the_api_models_are_built_from_the_records():
    pytest.importorskip("pydantic")
    from wbcnet.serve.schemas import CellAnswer, CountAnswer

    r = count_result()
    answer = CountAnswer.model_validate(r.to_dict())
    assert answer.model_dump(mode="json", by_alias=True, exclude_unset=True) == json.loads(json.dumps(r.to_dict()))
    fields = CellAnswer.model_fields
    assert fields["class_name"].alias == "class" and fields["refer"].description.startswith("for a person")
    # every JSON key of a record is in its model
    assert set(CellResult("x").to_dict()) | {"class", "confidence", "true"} == \
        {f.alias or n for n, f in fields.items()}
