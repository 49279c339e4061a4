"""Typed records of what wbcnet computes: one cell, one field, a count, an evaluation.

The computing modules make them (predict -> [CellResult], count -> CountResult, evaluate ->
EvalResult); the showing side (render/, cli, serve) reads their attributes. Each record has
the one way it becomes each of its outputs:

- `to_row(...)`: a CSV row, its numbers formatted as wbcnet's CSV files have always had them;
- `to_dict()`: JSON (a file, and serve's answers). serve/schemas.py builds the API's Pydantic
  models from these dataclasses (their types, JSON keys and `doc`), so /openapi.json describes
  every answer and a field added here appears in it.

Plain dataclasses of plain numbers (no numpy in a JSON field, no pydantic here: predict imports
this module and must stay quick to start). Field metadata: `doc` (the description), `key` (the
JSON key where it differs from the name), `digits` (floats rounded to this in JSON), `json`
(False: not part of the JSON), `omit_none` (left out of the JSON when None).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


def _f(doc: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, key: str | None = None,
       digits: int | None = None, json: bool = True, omit_none: bool = False):
    meta = {"doc": doc, "json": json, "omit_none": omit_none}
    if key:
        meta["key"] = key
    if digits is not None:
        meta["digits"] = digits
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


def _plain(value, digits: int | None = None):
    """A JSON-ready copy: records as their dicts, tuples as lists, numpy scalars as numbers,
    floats rounded to `digits` where a field asks for it."""
    if hasattr(value, "to_dict") and dataclasses.is_dataclass(value):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, digits) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and not hasattr(value, "__len__"):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and digits is not None:
        return round(value, digits)
    return value


class Record:
    """What every record shares: `to_dict()` from its fields' metadata, plus COMPUTED keys
    (properties of the record, listed with their type and description for the API schema)."""

    COMPUTED: ClassVar[dict[str, tuple[Any, str]]] = {}

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("json", True):
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.metadata.get("key", f.name)] = _plain(value, f.metadata.get("digits"))
        for key in self.COMPUTED:
            out[key] = _plain(getattr(self, key))
        return out


# --- one cell ---------------------------------------------------------------------------------

@dataclass
class CellResult(Record):
    """One classified cell (a picture of one cell, or a cell found in a field), or a file that
    could not be read (`error` set, no class)."""

    file: str = _f("the image (the field, for a cell found in one); in the API, the file name the client sent",
                   key="name")
    class_name: str | None = _f("the most likely class (whether referred or not); absent for an unreadable file",
                                None, key="class", omit_none=True)
    confidence: float | None = _f("the probability of that class", None, digits=6, omit_none=True)
    probabilities: dict[str, float] = _f("every class's probability (the checkpoint's temperature applied)",
                                         factory=dict, digits=6)
    refer: bool = _f("for a person to classify: unfamiliar, or below the confidence bar", False)
    unfamiliar: bool | None = _f("unlike the training labs' cells (null: the checkpoint has no such check, or it "
                                 "was turned off)", None)
    shift_score: float | None = _f("distance from the training labs' cells; above the checkpoint's threshold is "
                                   "unfamiliar", None, digits=3)
    cell_found: bool | None = _f("the checkpoint's cell crop found a cell in the picture (false: the whole "
                                 "picture was classified)", None)
    box: tuple[int, int, int, int] | None = _f("x0, y0, x1, y1 in the field's pixels (cells found in a field)", None)
    edge: bool = _f("cut by the field's edge: listed, not counted (the next field shows it whole)", False)
    error: str | None = _f("why the file could not be read", None)
    true_class: str | None = _f("the labelled class (an evaluation's cells)", None, key="true", omit_none=True)

    COMPUTED = {"counted": (bool, "in the differential: read, whole (not cut by the edge) and not referred"),
                "flag": (str, "edge, refer, `unreadable: <why>`, or empty")}

    @classmethod
    def from_predictions(cls, file: str, pred, j: int, referred, classes: list[str], *,
                         cell_found: bool | None = None, box=None, edge: bool = False) -> "CellResult":
        """Row `j` of an inference.Predictions; `referred` is pred.referred(min_confidence)."""
        probs = pred.probs[j]
        k = int(probs.argmax())
        return cls(file, classes[k], float(probs[k]), {c: float(p) for c, p in zip(classes, probs)},
                   bool(referred[j]), None if pred.unfamiliar is None else bool(pred.unfamiliar[j]),
                   None if pred.shift_score is None else float(pred.shift_score[j]),
                   None if cell_found is None else bool(cell_found),
                   None if box is None else tuple(int(v) for v in box), bool(edge))

    @property
    def predicted(self) -> str:
        """What the CSV files call `predicted`: the class, or `refer`."""
        return "" if self.error is not None else "refer" if self.refer else self.class_name

    @property
    def counted(self) -> bool:
        return self.error is None and not self.edge and not self.refer

    @property
    def flag(self) -> str:
        if self.error is not None:
            return f"unreadable: {self.error}"
        return "edge" if self.edge else "refer" if self.refer else ""

    # The CSV tables made of cells: predict's predictions, count's cells.csv and an evaluation's
    # predictions.csv (whose `predicted` is the class, referred or not, beside the `true` one).
    @staticmethod
    def columns(table: str, classes: list[str], shift: bool) -> list[str]:
        probs = [f"p_{c}" for c in classes]
        extra = ["shift_score", "unfamiliar"] if shift else []
        if table == "evaluate":
            return ["path", "true", "predicted", "confidence"] + probs + extra
        if table == "predict":
            return ["path", "predicted", "confidence"] + probs + ["cell_found"] + extra + ["error"]
        if table == "count":
            return ["file", "x0", "y0", "x1", "y1", "predicted", "confidence"] + probs + extra + ["flag"]
        raise ValueError(f"no cell table {table!r}")

    def to_row(self, classes: list[str], table: str) -> dict[str, Any]:
        """The cell as a row of `table` ("predict", "count" or "evaluate"); absent keys are empty cells."""
        row: dict[str, Any] = {"path": self.file, "file": self.file, "error": self.error or "", "flag": self.flag}
        if self.error is None:
            row.update(predicted=self.predicted, confidence=f"{self.confidence:.4f}",
                       **{f"p_{c}": f"{self.probabilities[c]:.4f}" for c in classes})
            if self.cell_found is not None:
                row["cell_found"] = "yes" if self.cell_found else "no"
            if self.unfamiliar is not None:
                row.update(shift_score=f"{self.shift_score:.2f}", unfamiliar="yes" if self.unfamiliar else "no")
        else:
            row.update(predicted="", confidence="")
        if self.box is not None:
            row.update(zip(("x0", "y0", "x1", "y1"), self.box))
        if table == "evaluate":
            row.update(true=self.true_class or "", predicted=self.class_name or "")
        keep = set(self.columns(table, classes, shift=True))
        return {k: v for k, v in row.items() if k in keep}


# --- whole fields and their count -------------------------------------------------------------

@dataclass
class Candidate(Record):
    """Something the finder looked at in a field and judged not to be a white cell."""

    box: tuple[int, int, int, int] = _f("x0, y0, x1, y1 in the field's pixels")
    score: float = _f("the finder's score (below its threshold for a white cell)", digits=3)


@dataclass
class FieldResult(Record):
    """One field of a count: its size and cells, or why it could not be read."""

    file: str = _f("the field's image; in the API, the file name the client sent", key="name")
    width: int = _f("in pixels", 0)
    height: int = _f("in pixels", 0)
    cells: list[CellResult] = _f("the white cells found, in the order found", factory=list)
    error: str | None = _f("why the field could not be read", None)
    greyscale: bool = _f("the field has no colour: the finder and classifier learnt from colour pictures, so cells are "
                         "missed or mistyped in it", False)
    picture: str | None = _f("the field drawn with its boxes: its file name in fields/ (wbcnet count), or a JPEG "
                             "data URI (the API, with drawn=true)", None)
    rejected: list[Candidate] = _f("candidates the finder judged not to be white cells (not classified, not counted)",
                                   factory=list)
    red_cell_px: float | None = _f("the red cells' diameter the finder read, in the field's pixels (its scale)", None,
                                   digits=1)
    scale_unsure: bool = _f("the finder's reading of the field's scale was unsure: its cells may be missed or "
                            "wrongly found", False)
    implausible: bool = _f("more white cells found than a smear field of this size can plausibly hold", False)


@dataclass
class ClassCount(Record):
    """One class's row of a differential."""

    count: int = _f("counted cells of this class")
    percent: float = _f("its share of the counted cells, in %")
    ci_low: float = _f("95% Wilson interval of the share, low end, in %")
    ci_high: float = _f("... high end, in %")
    referred: int = _f("referred cells the model put in this class (not counted)")


@dataclass
class Differential(Record):
    """Per class the counted cells, their share with a 95% Wilson interval, and the referred."""

    counted: int = _f("cells in the differential: whole and not referred")
    referred: int = _f("whole cells referred to a person (unfamiliar or below the confidence bar)")
    edge_skipped: int = _f("cells cut by a field's edge (listed, not counted)")
    classes: dict[str, ClassCount] = _f("per class, in the checkpoint's order", factory=dict)

    CSV_COLUMNS: ClassVar[list[str]] = ["class", "count", "percent", "ci_low", "ci_high", "referred"]

    def to_rows(self) -> list[list]:
        """differential.csv's rows (without the header, CSV_COLUMNS)."""
        return [[name, r.count, f"{r.percent:.1f}", f"{r.ci_low:.1f}", f"{r.ci_high:.1f}", r.referred]
                for name, r in self.classes.items()]


@dataclass
class ClassError(Record):
    """One class's share among the found (counted) cells against its share among the true ones."""

    found_percent: float = _f("share of the class among the counted found cells, in %")
    true_percent: float = _f("share among the labelled true boxes, in %")
    error: float = _f("found - true, in percentage points")


@dataclass
class TruthScore(Record):
    """A count scored against hand-drawn boxes (--truth): detection, type accuracy, differential error."""

    fields_scored: int = _f("fields the truth file lists (others are not scored)")
    fields_not_in_truth: int = _f("readable fields the truth file does not list")
    true_boxes: int = _f("hand-drawn boxes in the scored fields")
    found_boxes: int = _f("cells found in the scored fields")
    matched: int = _f("found boxes matched to a true one, one to one")
    recall: float = _f("matched / true boxes")
    precision: float = _f("matched / found boxes")
    typed_matches: int = _f("matches whose true box has a class label")
    type_accuracy: float | None = _f("share of those the model classified right (null: none typed)")
    type_accuracy_ci: tuple[float, float] = _f("95% Wilson interval of the type accuracy")
    confusion_matrix: list[list[int]] = _f("typed matches: rows true, columns found class")
    typed_counted: int = _f("typed matches that the differential counts (whole, not referred)")
    type_accuracy_counted: float | None = _f("the type accuracy of those")
    differential_error: dict[str, ClassError] = _f("per class, found % against true %")
    true_labelled: int = _f("true boxes with a class label")
    found_counted: int = _f("found cells counted in the differential")
    match_rule: str = _f("when a found box matches a true one")
    file: str = _f("the truth file", "")


@dataclass
class CountResult(Record):
    """A count of whole fields: every field with its cells, the differential and the settings."""

    fields: list[FieldResult] = _f("every field, in input order")
    differential: Differential = _f("the differential of the counted cells")
    classes: list[str] = _f("the checkpoint's classes", factory=list)
    min_confidence: float = _f("cells below this confidence were referred", 0.0)
    shift_check: bool = _f("the unfamiliar-cell check ran", False)
    checkpoint: str | None = _f("the checkpoint's file", None, json=False)
    target: int | None = _f("the number of counted cells asked for (--target)", None)
    truth: TruthScore | None = _f("scores against hand-drawn boxes (--truth)", None, omit_none=True)
    warnings: list[str] = _f("things a person should know about this count", factory=list)
    finder: str = _f("the finder that found the cells: 'shipped', 'classic', or a lab's own (wbcnet finder adapt)",
                     "shipped")
    model: str = _f("the model that classified the cells: 'fast' or 'accurate' (wbcnet's own), or the name "
                    "of the run or file it came from", "")

    COMPUTED = {"cells_found": (int, "white cells found in all fields"),
                "counted": (int, "cells in the differential"),
                "referred": (int, "whole cells referred to a person"),
                "edge_skipped": (int, "cells cut by a field's edge"),
                "fields_without_cells": (int, "readable fields where no white cell was found"),
                "rejected": (int, "candidates the finder judged not to be white cells (not counted)"),
                "target_reached": (bool | None, "at least `target` cells were counted (null: no target)")}

    @property
    def cells(self) -> list[CellResult]:
        return [c for f in self.fields for c in f.cells]

    @property
    def cells_found(self) -> int:
        return sum(len(f.cells) for f in self.fields)

    @property
    def counted(self) -> int:
        return self.differential.counted

    @property
    def referred(self) -> int:
        return self.differential.referred

    @property
    def edge_skipped(self) -> int:
        return self.differential.edge_skipped

    @property
    def unreadable(self) -> list[tuple[str, str]]:
        return [(f.file, f.error) for f in self.fields if f.error]

    @property
    def rejected(self) -> int:
        return sum(len(f.rejected) for f in self.fields)

    @property
    def fields_without_cells(self) -> int:
        return sum(1 for f in self.fields if not f.error and not f.cells)

    @property
    def target_reached(self) -> bool | None:
        return None if self.target is None else self.counted >= self.target

    def summary(self) -> dict:
        """count.json: the totals and settings (the cells are in cells.csv, the shares in differential.json)."""
        out = {"fields": len(self.fields), "unreadable": [list(u) for u in self.unreadable],
               "fields_without_cells": self.fields_without_cells, "cells_found": self.cells_found,
               "rejected": self.rejected,
               "implausible_fields": [f.file for f in self.fields if f.implausible],
               "scale_unsure_fields": [f.file for f in self.fields if f.scale_unsure],
               "counted": self.counted, "referred": self.referred, "edge_skipped": self.edge_skipped,
               "min_confidence": self.min_confidence, "shift_check": self.shift_check,
               "model": self.model, "checkpoint": self.checkpoint, "finder": self.finder,
               "classes": list(self.classes),
               "target": None if self.target is None else {"cells": self.target, "reached": self.target_reached},
               "warnings": list(self.warnings)}
        if self.truth is not None:
            out["truth"] = self.truth.to_dict()
        return out


# --- an evaluation ----------------------------------------------------------------------------

@dataclass
class Calibration(Record):
    """How well confidence matches accuracy on an evaluation's cells."""

    n_bins: int = _f("confidence bins of the reliability diagram and ECE")
    temperature: float = _f("the checkpoint's temperature (the logits are divided by it)")
    ece: float = _f("expected calibration error with the temperature")
    nll: float | None = _f("negative log-likelihood with the temperature", None, omit_none=True)
    ece_uncalibrated: float | None = _f("ECE at T = 1", None, omit_none=True)
    nll_uncalibrated: float | None = _f("negative log-likelihood at T = 1", None, omit_none=True)


@dataclass
class ShiftSummary(Record):
    """The unfamiliar-cell check on an evaluation's labelled cells."""

    threshold: float = _f("shift scores above it are unfamiliar")
    share_unfamiliar: float = _f("share of the cells flagged unfamiliar")
    n_unfamiliar: int = _f("cells flagged unfamiliar")
    accuracy_familiar: float | None = _f("accuracy of the other cells (null: none)")
    accuracy_unfamiliar: float | None = _f("accuracy of the flagged cells (null: none)")
    referral: list[dict[str, Any]] = _f("per minimum confidence: share of cells kept and their accuracy, when "
                                        "unfamiliar or unconfident cells are referred")
    warning: str | None = _f("said when many cells are unfamiliar")


@dataclass
class EvalResult(Record):
    """An evaluation on labelled cells: what metrics.json holds, and each cell's shift score."""

    classes: list[str] = _f("the checkpoint's classes")
    n: int = _f("cells evaluated")
    accuracy: float = _f("share of cells classified right")
    balanced_accuracy: float = _f("mean recall over the classes present")
    macro_f1: float = _f("mean F1 over the classes present")
    weighted_f1: float = _f("F1 averaged with the classes' supports as weights")
    per_class: dict[str, dict[str, float]] = _f("precision, recall, f1 and support of each class")
    confusion_matrix: list[list[int]] = _f("rows true, columns predicted, in `classes` order")
    absent_classes: list[str] = _f("classes without a cell here (left out of the macro averages)", factory=list)
    checkpoint: str | None = _f("the checkpoint's file", None)
    model: str | None = _f("the model's name", None)
    source: str | None = _f("the folder the images share", None)
    preprocess: dict[str, Any] = _f("the checkpoint's preprocessing", factory=dict)
    cell_not_found: int | None = _f("cells where the cell crop found no cell", None, omit_none=True)
    shift: ShiftSummary | None = _f("the unfamiliar-cell check on these cells", None, omit_none=True)
    ci: dict[str, Any] = _f("95% percentile-bootstrap intervals", factory=dict)
    top_confusions: list[dict[str, Any]] = _f("the most frequent (true, predicted) mistakes", factory=list)
    ece: float = _f("expected calibration error (top label)", float("nan"))
    calibration: Calibration | None = _f("calibration with and without the temperature", None)
    selective: list[dict[str, Any]] = _f("accuracy at 100/95/90/80/70/50% coverage", factory=list)
    # Not in metrics.json: what the evaluation's files and pictures are drawn from.
    shift_scores: Any = _f("each cell's shift score (numpy, for the shift AUROC across sets)", None, json=False)
    cells: list[CellResult] = _f("each cell with its true class (predictions.csv)", factory=list, json=False)
    report_text: str = _f("scikit-learn's classification report", "", json=False)
    reliability: list = _f("(title, reliability bins) of each calibration panel", factory=list, json=False)
    coverage: Any = _f("the coverage curve (analysis.coverage_curve)", None, json=False)

    SUMMARY_COLUMNS: ClassVar[list[str]] = [
        "set", "n", "accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "macro_f1", "macro_f1_ci",
        "ece", "share_unfamiliar", "accuracy_familiar", "shift_auroc"]

    def interval(self, key: str) -> tuple[float, float] | None:
        v = self.ci.get(key)
        return (float(v[0]), float(v[1])) if v else None

    def summary_row(self, name: str) -> dict:
        """This evaluation's row of summary.csv (shift_auroc is filled in across sets)."""
        def text(key):
            v = self.interval(key)
            return f"{v[0]:.4f}-{v[1]:.4f}" if v else ""

        shift = self.shift
        return {"set": name, "n": self.n, "accuracy": round(self.accuracy, 4), "accuracy_ci": text("accuracy"),
                "balanced_accuracy": round(self.balanced_accuracy, 4),
                "balanced_accuracy_ci": text("balanced_accuracy"), "macro_f1": round(self.macro_f1, 4),
                "macro_f1_ci": text("macro_f1"), "ece": round(self.ece, 4),
                "share_unfamiliar": "" if shift is None else shift.share_unfamiliar,
                "accuracy_familiar": "" if shift is None else shift.accuracy_familiar,
                "shift_auroc": ""}
