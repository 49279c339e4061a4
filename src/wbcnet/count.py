"""Fields -> cells -> differential: what `wbcnet count` does with whole smear fields.

Each field is read, its white cells found (data/locate.find_cells, scaled by the field's own red
cells), each cell cut out with a generous window and then given the checkpoint's own
preprocessing (the same `cell_input` that predict runs on a crop), and classified through
inference.run_model. A cell cut by the field's edge is classified and listed but not counted:
it is only part of a cell, and the next field will show it whole.

The differential gives each class's share of the counted cells with a Wilson 95% interval;
referred cells (unfamiliar, or below --min-confidence) are not in it, and are listed per class.
`score_against_truth` compares found boxes with hand-drawn ones (BCCD's wbc_boxes.csv).
"""
from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data.cache import default_workers
from .data.imageio import ImageReadError, load_rgb
from .data.locate import CellBox, crop_square, find_cells
from .data.preprocess import cell_input, from_meta
from .errors import WbcnetError
from .inference import run_model

# A found cell is cut out at this many radii around it before the checkpoint's preprocessing
# finds it again in the window and crops to its own context, exactly as predict does on a crop.
_WINDOW_CONTEXT = 2.5
# A cell is cut by the field's edge when its circle comes within this share of its radius of
# the edge (the circle is fitted to where the cell ends, and a cut cell's ends at the edge).
# Against BCCD's hand-drawn boxes that touch the border this flags 100 of 111 such cells and 10
# of the 259 others; a rule of "more than 3 of 32 rays from the centre ran off the field" got
# 93 and 10, the circle running 15% past the edge 72 and 4.
_EDGE_MARGIN = 0.1
# Fields classified together: large enough for a full batch, small enough to keep memory flat.
_CHUNK = 64


@dataclass
class FieldResult:
    """One field's cells: boxes in its pixels, model inputs, and whether each is cut by the edge."""

    path: str
    width: int = 0
    height: int = 0
    boxes: list[CellBox] = field(default_factory=list)
    edge: list[bool] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)
    error: str = ""
    drawn: str = ""  # its picture's name in fields/, where drawn


@dataclass
class Cell:
    """A found cell with its class probabilities (a row of cells.csv)."""

    file: str
    box: tuple[int, int, int, int]   # x0, y0, x1, y1, clipped to the field
    probs: np.ndarray
    referred: bool
    edge: bool
    unfamiliar: bool | None = None
    shift_score: float | None = None

    @property
    def counted(self) -> bool:
        return not self.edge and not self.referred


def cells_by_file(cells: list[Cell]) -> dict[str, list[Cell]]:
    """Each field's cells, in the order found."""
    out: dict[str, list[Cell]] = {}
    for c in cells:
        out.setdefault(c.file, []).append(c)
    return out


def box_corners(box: CellBox, width: int, height: int) -> tuple[int, int, int, int]:
    return (max(0, int(round(box.cx - box.radius))), max(0, int(round(box.cy - box.radius))),
            min(width, int(round(box.cx + box.radius))), min(height, int(round(box.cy + box.radius))))


def is_cut_by_edge(box: CellBox, width: int, height: int) -> bool:
    margin = _EDGE_MARGIN * box.radius
    return (box.cx - box.radius < margin or box.cy - box.radius < margin or
            box.cx + box.radius > width - 1 - margin or box.cy + box.radius > height - 1 - margin)


def find_field_cells(path: str, prep) -> FieldResult:
    """Read one field, find its white cells and make each one's model input. Never raises for a
    bad file: the error is kept, so one unreadable field does not stop a count."""
    result = FieldResult(path)
    try:
        rgb = load_rgb(path)
    except ImageReadError as e:
        result.error = e.reason
        return result
    result.height, result.width = rgb.shape[:2]
    for box in find_cells(rgb):
        window = crop_square(rgb, box, _WINDOW_CONTEXT)
        arr, _ = cell_input(window, prep)
        result.boxes.append(box)
        result.edge.append(is_cut_by_edge(box, result.width, result.height))
        result.inputs.append(arr.transpose(2, 0, 1))
    return result


def count_fields(model, meta, paths: list[str], min_confidence: float = 0.0, batch_size: int = 64,
                 workers: int | None = None, shift_check: bool = True,
                 progress: bool = True) -> tuple[list[FieldResult], list[Cell]]:
    """Find and classify the white cells of every field, in input order."""
    prep = from_meta(meta)
    fields: list[FieldResult] = []
    cells: list[Cell] = []
    bar = tqdm(total=len(paths), desc="counting", unit="field", disable=not progress)
    with ThreadPoolExecutor(workers or default_workers()) as pool:
        for start in range(0, len(paths), _CHUNK):
            chunk = list(pool.map(lambda p: find_field_cells(p, prep), paths[start:start + _CHUNK]))
            inputs = [x for f in chunk for x in f.inputs]
            pred = run_model(model, meta, np.stack(inputs) if inputs else np.zeros((0, 3, prep.size, prep.size), np.uint8),
                             batch_size, shift_check=shift_check)
            referred = pred.referred(min_confidence)
            j = 0
            for f in chunk:
                for box, edge in zip(f.boxes, f.edge):
                    cells.append(Cell(f.path, box_corners(box, f.width, f.height), pred.probs[j], bool(referred[j]), edge,
                                      None if pred.unfamiliar is None else bool(pred.unfamiliar[j]),
                                      None if pred.shift_score is None else float(pred.shift_score[j])))
                    j += 1
                f.inputs = []  # classified: let the crops go
            fields.extend(chunk)
            bar.update(len(chunk))
    bar.close()
    return fields, cells


# --- the differential --------------------------------------------------------------------------

def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of the proportion k/n (scipy's); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def differential(cells: list[Cell], classes: list[str]) -> dict:
    """Per class: counted cells, their share with a Wilson 95% interval, and referred cells."""
    whole = [c for c in cells if not c.edge]
    counted = [int(c.probs.argmax()) for c in whole if not c.referred]
    referred = [int(c.probs.argmax()) for c in whole if c.referred]
    n = len(counted)
    rows = {}
    for k, name in enumerate(classes):
        hits = counted.count(k)
        low, high = wilson_interval(hits, n)
        rows[name] = {"count": hits, "percent": 100.0 * hits / n if n else 0.0,
                      "ci_low": 100.0 * low, "ci_high": 100.0 * high, "referred": referred.count(k)}
    return {"counted": n, "referred": len(referred), "edge_skipped": len(cells) - len(whole), "classes": rows}


# --- scoring against hand-drawn boxes ----------------------------------------------------------

def read_truth(path) -> dict[str, list[tuple[tuple[float, float, float, float], str]]]:
    """file name -> [(x0, y0, x1, y1), label] from a CSV `file,x0,y0,x1,y1[,label]` (label may be empty)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            need = {"file", "x0", "y0", "x1", "y1"}
            if reader.fieldnames is None or not need <= set(reader.fieldnames):
                raise WbcnetError(f"{path}: a truth file needs the columns file,x0,y0,x1,y1[,label] "
                                  f"(found {', '.join(reader.fieldnames or []) or 'none'})")
            truth: dict[str, list] = {}
            for line, row in enumerate(reader, start=2):
                try:
                    box = tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1"))
                except (TypeError, ValueError):
                    raise WbcnetError(f"{path}, line {line}: box corners must be numbers") from None
                truth.setdefault(Path(row["file"]).name, []).append((box, (row.get("label") or "").strip()))
    except OSError as e:
        raise WbcnetError(f"{path}: cannot read the truth file ({e.strerror or e})") from None
    return truth


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(found: list, true: list, min_iou: float = 0.3) -> list[tuple[int, int]]:
    """Pairs (found index, true index), one-to-one. A pair may match when IoU >= min_iou or the
    found box's centre lies inside the true box; among those, the assignment of highest total
    IoU (hand-drawn boxes are loose, so a centre inside counts even at a low IoU)."""
    if not found or not true:
        return []
    from scipy.optimize import linear_sum_assignment

    score = np.zeros((len(found), len(true)))
    allowed = np.zeros_like(score, dtype=bool)
    for i, f in enumerate(found):
        cx, cy = (f[0] + f[2]) / 2, (f[1] + f[3]) / 2
        for j, t in enumerate(true):
            score[i, j] = iou(f, t)
            allowed[i, j] = score[i, j] >= min_iou or (t[0] <= cx <= t[2] and t[1] <= cy <= t[3])
    rows, cols = linear_sum_assignment(np.where(allowed, 1.0 + score, 0.0), maximize=True)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if allowed[i, j]]


def score_against_truth(fields: list[FieldResult], cells: list[Cell], truth: dict, classes: list[str]) -> dict:
    """Detection recall/precision, the type accuracy of matched cells, and the differential error
    (found % minus true %), over the fields the truth file lists (others are not scored: a field
    missing from it may hold cells nobody boxed)."""
    by_file = cells_by_file(cells)
    scored = [f for f in fields if not f.error and Path(f.path).name in truth]
    n_true = n_found = n_matched = 0
    typed = right = 0
    typed_counted = right_counted = 0
    true_labels, found_labels = [], []
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for f in scored:
        mine = by_file.get(f.path, [])
        theirs = truth[Path(f.path).name]
        pairs = match_boxes([c.box for c in mine], [b for b, _ in theirs])
        n_true, n_found, n_matched = n_true + len(theirs), n_found + len(mine), n_matched + len(pairs)
        for i, j in pairs:
            label = theirs[j][1]
            if label in classes:
                guess = int(mine[i].probs.argmax())
                typed, right = typed + 1, right + (classes[guess] == label)
                if mine[i].counted:
                    typed_counted, right_counted = typed_counted + 1, right_counted + (classes[guess] == label)
                confusion[classes.index(label), guess] += 1
        true_labels += [lab for _, lab in theirs if lab in classes]
        found_labels += [classes[int(c.probs.argmax())] for c in mine if c.counted]
    recall, precision = n_matched / max(n_true, 1), n_matched / max(n_found, 1)
    acc_low, acc_high = wilson_interval(right, typed)
    error = {}
    for name in classes:
        t = 100.0 * true_labels.count(name) / max(len(true_labels), 1)
        f_ = 100.0 * found_labels.count(name) / max(len(found_labels), 1)
        error[name] = {"found_percent": f_, "true_percent": t, "error": f_ - t}
    return {
        "fields_scored": len(scored), "fields_not_in_truth": sum(1 for f in fields if not f.error) - len(scored),
        "true_boxes": n_true, "found_boxes": n_found, "matched": n_matched,
        "recall": recall, "precision": precision,
        "typed_matches": typed, "type_accuracy": right / typed if typed else None,
        "type_accuracy_ci": [acc_low, acc_high], "confusion_matrix": confusion.tolist(),
        # The cells the differential counts: whole (not cut by the edge) and not referred.
        "typed_counted": typed_counted,
        "type_accuracy_counted": right_counted / typed_counted if typed_counted else None,
        "differential_error": error, "true_labelled": len(true_labels), "found_counted": len(found_labels),
        "match_rule": "IoU >= 0.3 or the found centre inside the true box, one-to-one",
    }


# --- outputs -----------------------------------------------------------------------------------

def write_cells_csv(path, fields: list[FieldResult], cells: list[Cell], classes: list[str]) -> None:
    """cells.csv: one row per cell, plus one per unreadable field. `flag`: edge (cut by the field's
    edge, not counted), refer (unfamiliar or below the confidence bar), unreadable: <reason>."""
    from .files import atomic_write

    columns = ["file", "x0", "y0", "x1", "y1", "predicted", "confidence"] + [f"p_{c}" for c in classes]
    with_shift = any(c.unfamiliar is not None for c in cells)
    columns += (["shift_score", "unfamiliar"] if with_shift else []) + ["flag"]
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, restval="")
        w.writeheader()
        for f in fields:
            if f.error:
                w.writerow({"file": f.path, "flag": f"unreadable: {f.error}"})
        for c in cells:
            k = int(c.probs.argmax())
            row = dict(zip(("x0", "y0", "x1", "y1"), c.box), file=c.file,
                       predicted="refer" if c.referred else classes[k], confidence=f"{c.probs[k]:.4f}",
                       flag="edge" if c.edge else "refer" if c.referred else "",
                       **{f"p_{name}": f"{v:.4f}" for name, v in zip(classes, c.probs)})
            if with_shift:
                row.update(shift_score=f"{c.shift_score:.2f}", unfamiliar="yes" if c.unfamiliar else "no")
            w.writerow(row)


def write_differential(out: Path, diff: dict, classes: list[str]) -> None:
    from .files import atomic_write, write_text_atomic

    with atomic_write(out / "differential.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["class", "count", "percent", "ci_low", "ci_high", "referred"])
        for name in classes:
            r = diff["classes"][name]
            w.writerow([name, r["count"], f"{r['percent']:.1f}", f"{r['ci_low']:.1f}", f"{r['ci_high']:.1f}", r["referred"]])
    write_text_atomic(out / "differential.json", json.dumps(diff, indent=2) + "\n")


# A colour per class for the boxes, the bars and the gallery (matplotlib's tab10, in order).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def draw_field(path: str, cells: list[Cell], classes: list[str], out_path: Path) -> None:
    """The field with its boxes: class colour and name with confidence; edge cells grey and
    labelled `edge`, referred cells black and labelled `refer`."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(load_rgb(path))
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 320))
    font = ImageFont.load_default(size=max(12, round(max(img.size) / 45)))
    for c in cells:
        k = int(c.probs.argmax())
        colour = "#888888" if c.edge else "#000000" if c.referred else PALETTE[k % len(PALETTE)]
        draw.rectangle(c.box, outline=colour, width=width)
        text = ("edge: " if c.edge else "refer: " if c.referred else "") + f"{classes[k]} {c.probs[k]:.2f}"
        tall = font.size + 4
        # Above the box where there is room, else just inside its top.
        x, y = c.box[0] + width, c.box[1] - tall if c.box[1] >= tall else c.box[1] + width
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=colour)
        draw.text((x, y), text, fill="white", font=font)
    img.save(out_path, quality=88)


def run_count(model, meta, paths: list[str], out: Path, min_confidence: float = 0.0, target: int | None = None,
              truth_path=None, batch_size: int = 64, workers: int | None = None, shift_check: bool = True,
              draw: bool = True, progress: bool = True) -> tuple[dict, dict]:
    """The whole command: count, write cells.csv, differential.csv/json, fields/, count.html
    (and truth.json with `truth_path`); returns (the summary that count.json holds, the
    differential)."""
    from .files import write_text_atomic

    truth = read_truth(truth_path) if truth_path else None  # a bad truth file fails before the work
    fields, cells = count_fields(model, meta, paths, min_confidence, batch_size, workers, shift_check, progress)
    classes = meta.classes
    diff = differential(cells, classes)
    write_cells_csv(out / "cells.csv", fields, cells, classes)
    write_differential(out, diff, classes)
    summary = {
        "fields": len(fields), "unreadable": [[f.path, f.error] for f in fields if f.error],
        "fields_without_cells": sum(1 for f in fields if not f.error and not f.boxes),
        "cells_found": len(cells), **{k: diff[k] for k in ("counted", "referred", "edge_skipped")},
        "min_confidence": min_confidence, "shift_check": shift_check and meta.shift_stats is not None,
        "checkpoint": str(meta.path), "classes": classes,
        "target": None if target is None else {"cells": target, "reached": diff["counted"] >= target},
    }
    if truth is not None:
        summary["truth"] = score_against_truth(fields, cells, truth, classes)
        summary["truth"]["file"] = str(truth_path)
        write_text_atomic(out / "truth.json", json.dumps(summary["truth"], indent=2) + "\n")
    by_file = cells_by_file(cells)
    if draw:
        (out / "fields").mkdir(exist_ok=True)
        taken: set[str] = set()
        for f in tqdm([f for f in fields if not f.error], desc="drawing", unit="field", disable=not progress, leave=False):
            # Fields from two folders may share a name; neither picture may replace the other.
            stem, n = Path(f.path).stem, 1
            while (stem if n == 1 else f"{stem}-{n}") in taken:
                n += 1
            f.drawn = (stem if n == 1 else f"{stem}-{n}") + ".jpg"
            taken.add(f.drawn[:-4])
            draw_field(f.path, by_file.get(f.path, []), classes, out / "fields" / f.drawn)
    write_text_atomic(out / "count.json", json.dumps(summary, indent=2) + "\n")
    from .count_report import write_count_report

    write_count_report(out, summary, diff, fields, cells, by_file)
    return summary, diff
