"""Fields -> cells -> differential: what `wbcnet count` computes from whole smear fields.

Each field is read once, its white cells found (data/locate.find_cells, scaled by the field's own
red cells), each cell cut out with a generous window and then given the checkpoint's own
preprocessing (the same `cell_input` that predict runs on a crop), and classified through
inference.run_model. A cell cut by the field's edge is classified and listed but not counted:
it is only part of a cell, and the next field will show it whole.

The differential gives each class's share of the counted cells with a Wilson 95% interval;
referred cells (unfamiliar, or below --min-confidence) are not in it, and are listed per class.
`score_against_truth` compares found boxes with hand-drawn ones (BCCD's wbc_boxes.csv).

This module computes and returns records (core/results.py); it writes and draws nothing. Whoever
shows a count (render/count.py, serve) may ask for each field's picture while it is decoded:
`on_field(field, found)` is called once per field after its cells are classified, with a copy of
the field at most FIELD_PICTURE_SIDE pixels and each cell's box at most CELL_PICTURE_SIDE, so that
no field is read twice and memory stays bounded by one chunk of fields.
"""
from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..cells.locate import CellBox, crop_square, search_field
from ..cells.preprocess import cell_inputs, from_meta
from ..core.errors import WbcnetError
from ..core.imageio import ImageReadError, load_rgb
from ..core.results import (Candidate, CellResult, ClassCount, ClassError, CountResult, Differential, FieldResult,
                            TruthScore)
from ..data.cache import default_workers
from ..models.zoo import model_label
from .runner import run_model

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
# The pictures kept for whoever shows the count (on_field): the field scaled down to this longer
# side (a chunk of 64 such fields is at most 64 x 1024 x 1024 x 3 bytes = 200 MB), and each
# cell's box scaled down to this side, cut from the field at full resolution.
FIELD_PICTURE_SIDE = 1024
# A field whose channels differ by at most this (99th percentile) is grey: the cell finder and the
# classifier learnt from stained colour pictures, and the finder misses cells in grey ones.
_GREY_SPREAD = 6
CELL_PICTURE_SIDE = 96
# The finder's scale is unsure when its map of log red-cell diameters has an interquartile range
# above this (a factor of ~1.5 between the quartiles).
_SCALE_SPREAD = 0.4
# A field holds implausibly many white cells when they outnumber one in _MAX_WBC_PER_RBC of the red
# cells that would tile it (its area over a red cell's, at the diameter the finder read), and more
# than _MAX_WBC_ANY. Blood has about one white cell per 500-1,000 red cells; the bound is 60x
# that, so a heavy leukocytosis passes and a finder firing on red cells does not (the held-back
# lab of issue 27: 94-100 "white cells" in fields of ~230 red-cell areas).
_MAX_WBC_PER_RBC = 8
_MAX_WBC_ANY = 4


@dataclass
class FoundCells:
    """One field on its way through: the cells found in it and their model inputs (dropped once
    classified), and, when asked for, its pictures."""

    path: str
    width: int = 0
    height: int = 0
    boxes: list[CellBox] = field(default_factory=list)
    rejected: list[CellBox] = field(default_factory=list)  # looked at, judged not white cells
    red_cell_px: float | None = None                       # the scale the finder read
    scale_unsure: bool = False
    edge: list[bool] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)
    error: str = ""
    greyscale: bool = False
    picture: np.ndarray | None = None   # the field, longer side at most FIELD_PICTURE_SIDE
    scale: float = 1.0                   # picture pixels per field pixel
    cell_pictures: list[np.ndarray] = field(default_factory=list)  # each cell's box, at most CELL_PICTURE_SIDE
    rejected_pictures: list[np.ndarray] = field(default_factory=list)  # each rejected candidate's box, likewise


OnField = Callable[[FieldResult, FoundCells], None]


def box_corners(box: CellBox, width: int, height: int) -> tuple[int, int, int, int]:
    return (max(0, int(round(box.cx - box.radius))), max(0, int(round(box.cy - box.radius))),
            min(width, int(round(box.cx + box.radius))), min(height, int(round(box.cy + box.radius))))


def is_cut_by_edge(box: CellBox, width: int, height: int) -> bool:
    margin = _EDGE_MARGIN * box.radius
    return (box.cx - box.radius < margin or box.cy - box.radius < margin or
            box.cx + box.radius > width - 1 - margin or box.cy + box.radius > height - 1 - margin)


def is_greyscale(rgb: np.ndarray) -> bool:
    """No colour to speak of: nearly every pixel's channels within a few levels of each other (a
    grey picture saved as RGB JPEG keeps a little chroma noise)."""
    small = rgb[::4, ::4].astype(np.int16)
    spread = small.max(axis=2) - small.min(axis=2)
    return bool(np.percentile(spread, 99) <= _GREY_SPREAD)


def _shrunk(rgb: np.ndarray, side: int) -> np.ndarray:
    img = Image.fromarray(rgb)
    img.thumbnail((side, side))
    return np.asarray(img)


def lab_finder(meta) -> str | None:
    """The finder a lab taught (`wbcnet finder adapt`): finder.safetensors beside the checkpoint
    of a lab model; None for any other checkpoint (the shipped finder)."""
    from ..cells.finder.paths import SHIPPED

    path = getattr(meta, "path", None)
    if path is None:
        return None
    stem = Path(path).parent / "finder"
    # The shipped model sits in the package's assets beside the shipped finder: that one is not a lab's.
    if not stem.with_suffix(".json").is_file() or stem.with_suffix(".json").resolve() == SHIPPED.with_suffix(".json").resolve():
        return None
    return str(stem)


def finder_name(meta) -> str:
    """What count.json and the page say found the cells."""
    if from_meta(meta).finder == "classic":
        return "classic"
    return lab_finder(meta) or "shipped"


def scale_is_unsure(search) -> bool:
    """The finder's looks at a field disagreed on its scale, or its map of red-cell sizes spread
    wider than _SCALE_SPREAD (a field of mixed content, or one unlike any it learnt from)."""
    return (not search.scale_settled) or search.scale_spread > _SCALE_SPREAD


def _box_picture(rgb: np.ndarray, box: CellBox, width: int, height: int) -> np.ndarray:
    x0, y0, x1, y1 = box_corners(box, width, height)
    return _shrunk(rgb[y0:y1, x0:x1], CELL_PICTURE_SIDE) if x1 > x0 and y1 > y0 else np.zeros((0, 0, 3), np.uint8)


def find_field_cells(path: str, prep, pictures: bool = False, finder_weights: str | None = None) -> FoundCells:
    """Read one field, find its white cells and make each one's model input (and, with
    `pictures`, keep the field's and the cells' pictures). Never raises for a bad file: the
    error is kept, so one unreadable field does not stop a count. `finder_weights`: a lab's own
    finder (lab_finder) instead of the shipped one."""
    result = FoundCells(path)
    try:
        rgb = load_rgb(path)
    except ImageReadError as e:
        result.error = e.reason
        return result
    result.height, result.width = rgb.shape[:2]
    result.greyscale = is_greyscale(rgb)
    search = search_field(rgb, prep.finder, finder_weights)
    result.rejected = search.rejected
    result.red_cell_px = search.red_cell_px if search.red_cell_px == search.red_cell_px else None
    result.scale_unsure = prep.finder != "classic" and scale_is_unsure(search)
    # The finder re-centres every window in one batch (a batch of one takes torch's slow path).
    windows = [crop_square(rgb, box, _WINDOW_CONTEXT) for box in search.cells]
    for box, (arr, _) in zip(search.cells, cell_inputs(windows, prep) if windows else []):
        result.boxes.append(box)
        result.edge.append(is_cut_by_edge(box, result.width, result.height))
        result.inputs.append(arr.transpose(2, 0, 1))
        if pictures:
            result.cell_pictures.append(_box_picture(rgb, box, result.width, result.height))
    if pictures:
        result.rejected_pictures = [_box_picture(rgb, b, result.width, result.height) for b in result.rejected]
        result.picture = rgb if max(rgb.shape[:2]) <= FIELD_PICTURE_SIDE else _shrunk(rgb, FIELD_PICTURE_SIDE)
        result.scale = result.picture.shape[1] / result.width
    return result


def find_fields(paths: list[str], prep, workers: int | None = None, pictures: bool = False, pool=None,
                finder_weights: str | None = None) -> list[FoundCells]:
    """find_field_cells over `paths` in threads, in input order."""
    if pool is not None:
        return list(pool.map(lambda p: find_field_cells(p, prep, pictures, finder_weights), paths))
    with ThreadPoolExecutor(workers or default_workers()) as own:
        return find_fields(paths, prep, pictures=pictures, pool=own, finder_weights=finder_weights)


def classify_found(model, meta, found: list[FoundCells], min_confidence: float = 0.0, batch_size: int = 64,
                   shift_check: bool = True) -> list[FieldResult]:
    """Classify the cells of fields already searched: one FieldResult per field, in order."""
    prep = from_meta(meta)
    classes = list(meta.classes)
    inputs = [x for f in found for x in f.inputs]
    pred = run_model(model, meta, np.stack(inputs) if inputs else np.zeros((0, 3, prep.size, prep.size), np.uint8),
                     batch_size, shift_check=shift_check)
    referred = pred.referred(min_confidence)
    out, j = [], 0
    for f in found:
        cells = []
        for box, edge in zip(f.boxes, f.edge):
            cells.append(CellResult.from_predictions(f.path, pred, j, referred, classes,
                                                     box=box_corners(box, f.width, f.height), edge=edge))
            j += 1
        rejected = [Candidate(box_corners(b, f.width, f.height), b.score) for b in f.rejected]
        out.append(FieldResult(f.path, f.width, f.height, cells, f.error or None, f.greyscale, rejected=rejected,
                               red_cell_px=f.red_cell_px, scale_unsure=f.scale_unsure,
                               implausible=is_implausible(len(cells), f.width, f.height, f.red_cell_px)))
    return out


def count_fields(model, meta, paths: list[str], min_confidence: float = 0.0, batch_size: int = 64,
                 workers: int | None = None, shift_check: bool = True, progress: bool = True,
                 on_field: OnField | None = None) -> list[FieldResult]:
    """Find and classify the white cells of every field, in input order. `on_field(field, found)`
    is called for each field once it is classified, with its pictures (see the module's doc)."""
    prep = from_meta(meta)
    finder_weights = lab_finder(meta)
    fields: list[FieldResult] = []
    # Closed however the count ends: a bar left open redraws itself after Ctrl-C's "interrupted".
    with tqdm(total=len(paths), desc="counting", unit="field", disable=not progress) as bar, \
            ThreadPoolExecutor(workers or default_workers()) as pool:
        for start in range(0, len(paths), _CHUNK):
            found = find_fields(paths[start:start + _CHUNK], prep, pictures=on_field is not None, pool=pool,
                                finder_weights=finder_weights)
            chunk = classify_found(model, meta, found, min_confidence, batch_size, shift_check)
            for f, seen in zip(chunk, found):
                if on_field is not None:
                    on_field(f, seen)
            del found  # classified and shown: let the crops and pictures go
            fields.extend(chunk)
            bar.update(len(chunk))
    return fields


# --- the differential --------------------------------------------------------------------------

def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of the proportion k/n (scipy's); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def differential(cells: list[CellResult], classes: list[str]) -> Differential:
    """Per class: counted cells, their share with a Wilson 95% interval, and referred cells."""
    whole = [c for c in cells if c.error is None and not c.edge]
    counted = [c.class_name for c in whole if not c.refer]
    referred = [c.class_name for c in whole if c.refer]
    n = len(counted)
    rows = {}
    for name in classes:
        hits = counted.count(name)
        low, high = wilson_interval(hits, n)
        rows[name] = ClassCount(hits, 100.0 * hits / n if n else 0.0, 100.0 * low, 100.0 * high, referred.count(name))
    return Differential(n, len(referred), sum(1 for c in cells if c.error is None) - len(whole), rows)


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


def score_against_truth(fields: list[FieldResult], truth: dict, classes: list[str], file: str = "") -> TruthScore:
    """Detection recall/precision, the type accuracy of matched cells, and the differential error
    (found % minus true %), over the fields the truth file lists (others are not scored: a field
    missing from it may hold cells nobody boxed)."""
    scored = [f for f in fields if not f.error and Path(f.file).name in truth]
    n_true = n_found = n_matched = 0
    typed = right = 0
    typed_counted = right_counted = 0
    true_labels, found_labels = [], []
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for f in scored:
        mine = f.cells
        theirs = truth[Path(f.file).name]
        pairs = match_boxes([c.box for c in mine], [b for b, _ in theirs])
        n_true, n_found, n_matched = n_true + len(theirs), n_found + len(mine), n_matched + len(pairs)
        for i, j in pairs:
            label = theirs[j][1]
            if label in classes:
                guess = mine[i].class_name
                typed, right = typed + 1, right + (guess == label)
                if mine[i].counted:
                    typed_counted, right_counted = typed_counted + 1, right_counted + (guess == label)
                confusion[classes.index(label), classes.index(guess)] += 1
        true_labels += [lab for _, lab in theirs if lab in classes]
        found_labels += [c.class_name for c in mine if c.counted]
    recall, precision = n_matched / max(n_true, 1), n_matched / max(n_found, 1)
    acc_low, acc_high = wilson_interval(right, typed)
    error = {}
    for name in classes:
        t = 100.0 * true_labels.count(name) / max(len(true_labels), 1)
        f_ = 100.0 * found_labels.count(name) / max(len(found_labels), 1)
        error[name] = ClassError(f_, t, f_ - t)
    return TruthScore(
        fields_scored=len(scored), fields_not_in_truth=sum(1 for f in fields if not f.error) - len(scored),
        true_boxes=n_true, found_boxes=n_found, matched=n_matched, recall=recall, precision=precision,
        typed_matches=typed, type_accuracy=right / typed if typed else None, type_accuracy_ci=(acc_low, acc_high),
        confusion_matrix=confusion.tolist(),
        # The cells the differential counts: whole (not cut by the edge) and not referred.
        typed_counted=typed_counted,
        type_accuracy_counted=right_counted / typed_counted if typed_counted else None,
        differential_error=error, true_labelled=len(true_labels), found_counted=len(found_labels),
        match_rule="IoU >= 0.3 or the found centre inside the true box, one-to-one", file=file)


def run_count(model, meta, paths: list[str], min_confidence: float = 0.0, target: int | None = None,
              truth_path=None, batch_size: int = 64, workers: int | None = None, shift_check: bool = True,
              progress: bool = True, on_field: OnField | None = None) -> CountResult:
    """The whole count: find and classify every field's cells, the differential, and with
    `truth_path` the scores against hand-drawn boxes. Writes nothing (render/count.py does)."""
    truth = read_truth(truth_path) if truth_path else None  # a bad truth file fails before the work
    fields = count_fields(model, meta, paths, min_confidence, batch_size, workers, shift_check, progress, on_field)
    classes = list(meta.classes)
    result = CountResult(fields, differential([c for f in fields for c in f.cells], classes), classes,
                         min_confidence, shift_check and meta.shift_stats is not None, str(meta.path), target,
                         finder=finder_name(meta), model=model_label(meta.path))
    if truth is not None:
        result.truth = score_against_truth(fields, truth, classes, str(truth_path))
    result.warnings += count_warnings(fields)
    return result


# A smear field holds about one white cell or more at the magnifications we know (BCCD: 372 boxed
# in 364 fields; the held-back lab of issue 18: 508 in 498; a lower magnification shows more).
# Fewer than this many a field, over at least _FEW_MIN_FIELDS fields, means the finder is likely
# missing this lab's cells (that lab's 19 boxes in 498 fields with the threshold finder: 0.04).
_FEW_CELLS_PER_FIELD = 0.2
_FEW_MIN_FIELDS = 5


def is_implausible(cells: int, width: int, height: int, red_cell_px: float | None) -> bool:
    """More white cells than a field of this size can plausibly hold (see _MAX_WBC_PER_RBC); with no
    scale read, a field's area is taken as 100 red cells."""
    if cells <= _MAX_WBC_ANY:
        return False
    red_cells = width * height / (np.pi / 4 * red_cell_px ** 2) if red_cell_px else 100.0
    return cells > red_cells / _MAX_WBC_PER_RBC


def _named(fields: list[FieldResult], most: int = 5) -> str:
    names = ", ".join(Path(f.file).name for f in fields[:most])
    return names + (f" and {len(fields) - most} more" if len(fields) > most else "")


def count_warnings(fields: list[FieldResult]) -> list[str]:
    """What a person should know before trusting the count."""
    out = []
    crowded = [f for f in fields if f.implausible]
    if crowded:
        n = sum(len(f.cells) for f in crowded)
        out.append(f"implausibly many white cells in {len(crowded)} of {len(fields)} fields ({n} in all; "
                   f"{_named(crowded)}): blood holds about one white cell per 500-1,000 red cells, so the finder is "
                   f"likely taking red cells or debris for white cells here; check the drawn fields, or teach the "
                   f"finder this lab (wbcnet finder adapt)")
    unsure = [f for f in fields if f.scale_unsure and not f.error]
    if unsure:
        out.append(f"the finder was unsure of the scale of {len(unsure)} of {len(fields)} fields ({_named(unsure)}): "
                   f"cells there may be missed or wrongly found; check the drawn fields")
    readable = [f for f in fields if not f.error]
    found = sum(len(f.cells) for f in readable)
    if readable and found == 0:
        out.append(f"no white cell was found in any of the {len(readable)} readable fields: if they are stained "
                   f"blood smears, the finder does not see this lab's cells; look at the fields and tell us")
    elif len(readable) >= _FEW_MIN_FIELDS and found < _FEW_CELLS_PER_FIELD * len(readable):
        out.append(f"only {found} white cells were found in {len(readable)} fields ({found / len(readable):.2f} a "
                   f"field, where a smear field usually holds one or more): the finder may be missing this lab's "
                   f"cells, so the differential may not stand for the smear; check the drawn fields")
    grey = [f for f in fields if f.greyscale]
    if grey:
        in_grey = sum(len(f.cells) for f in grey)
        out.append(f"{len(grey)} of {len(fields)} fields are greyscale ({Path(grey[0].file).name}"
                   f"{' and others' if len(grey) > 1 else ''}; {in_grey} cells found in them): the finder and the "
                   f"classifier learnt from stained colour pictures and miss or mistype cells in grey ones; give the "
                   f"colour pictures")
    return out
