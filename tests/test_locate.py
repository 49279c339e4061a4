"""The threshold finder (wbcnet.cells.classic, `finder="classic"`): find the white cell in
crops from three labs' framings, crop it to one scale. The learned finder, the default, is
tested in test_finder.py.

The framings are real: Raabin-WBC from the bundled sample (small cell among red cells), PBC and
BCCD crops under tests/data/framings (see CREDITS.md there; BCCD's are tight and blurry).
"""
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, sample_paths
from wbcnet.cells.locate import DEFAULT_CONTEXT, CellBox, crop_square
from wbcnet.cells.classic import find_cell, find_cells

FRAMINGS = Path(__file__).resolve().parent / "data" / "framings"
CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
MODEL_SIZE = 112


def framing_paths(name: str) -> list[Path]:
    if name == "raabin":
        return sample_paths(2)
    return sorted((FRAMINGS / name).glob("*/*.jpg"))


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def to_model(rgb: np.ndarray, box: CellBox) -> np.ndarray:
    crop = crop_square(rgb, box, DEFAULT_CONTEXT)
    return np.asarray(Image.fromarray(crop).resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("framing", ["raabin", "pbc", "bccd"])
def test_the_cell_is_found_in_every_framing(framing):
    paths = framing_paths(framing)
    assert len(paths) == 10 and {p.parent.name for p in paths} == set(CLASSES)
    for path in paths:
        rgb = load(path)
        side = max(rgb.shape[:2])
        box = find_cell(rgb)
        assert box is not None, path.name
        # The cell sits inside the picture, and is a cell's size: not a platelet, not the frame.
        assert 0 <= box.cx < rgb.shape[1] and 0 <= box.cy < rgb.shape[0], (path.name, box)
        assert 0.1 * side < box.radius < 0.6 * side, (path.name, box)


def test_framings_differ_before_the_crop_and_agree_after_it():
    """The same class reaches the model at one scale whatever the lab's framing."""
    raw, cropped = {}, {}
    for framing in ["raabin", "pbc", "bccd"]:
        for path in framing_paths(framing):
            rgb = load(path)
            box = find_cell(rgb)
            again = find_cell(to_model(rgb, box))
            assert again is not None, path.name
            # Found again at the scale the crop was cut for (radius = side / (2 * context)).
            assert 0.7 < again.radius / MODEL_SIZE * 2 * DEFAULT_CONTEXT < 1.5, (framing, path.name, again)
            key = (path.parent.name, framing)
            raw.setdefault(key, []).append(box.radius / max(rgb.shape[:2]))
            cropped.setdefault(key, []).append(again.radius / MODEL_SIZE)
    for cls in CLASSES:
        raw_means = [np.mean(v) for (c, _), v in raw.items() if c == cls]
        crop_means = [np.mean(v) for (c, _), v in cropped.items() if c == cls]
        raw_spread, crop_spread = max(raw_means) / min(raw_means), max(crop_means) / min(crop_means)
        assert crop_spread < 1.45, (cls, crop_means)
        assert crop_spread < raw_spread, (cls, raw_means, crop_means)
    # BCCD frames cells about twice as tight as Raabin-WBC and PBC: the test has teeth.
    bccd = np.mean([np.mean(v) for (_, f), v in raw.items() if f == "bccd"])
    pbc = np.mean([np.mean(v) for (_, f), v in raw.items() if f == "pbc"])
    assert bccd > 1.6 * pbc


@pytest.mark.parametrize("framing", ["raabin", "pbc"])
def test_a_cell_pasted_off_centre_on_black_is_found_where_it_was_pasted(framing):
    for i, path in enumerate(framing_paths(framing)):
        rgb = load(path)
        box = find_cell(rgb)
        # With some of its surroundings, as a lab's crop of a cell near the field's edge has.
        cell = crop_square(rgb, box, min(2.2, 0.4 * rgb.shape[0] / box.radius))
        side = cell.shape[0]
        canvas = np.zeros_like(rgb)
        # Into a corner, a different one each time.
        oy = 2 if i % 2 else rgb.shape[0] - side - 2
        ox = 2 if i % 4 < 2 else rgb.shape[1] - side - 2
        canvas[oy:oy + side, ox:ox + side] = cell
        found = find_cell(canvas)
        assert found is not None, path.name
        assert np.hypot(found.cx - ox - side / 2, found.cy - oy - side / 2) < 0.5 * box.radius, (path.name, found)
        # Loosely: with less of the surroundings there is less to tell cytoplasm from red cell by.
        assert 0.7 < found.radius / box.radius < 1.45, (path.name, found, box)


@pytest.mark.parametrize("framing", ["raabin", "pbc"])
def test_a_whole_crop_on_a_black_frame_twice_its_size(framing):
    """The cell is then a few pixels in the first working copy, and find_cell looks again."""
    rng = np.random.default_rng(0)
    for path in framing_paths(framing):
        rgb = load(path)
        h, w = rgb.shape[:2]
        box = find_cell(rgb)
        canvas = np.zeros((2 * h, 2 * w, 3), np.uint8)
        oy, ox = rng.integers(0, h), rng.integers(0, w)
        canvas[oy:oy + h, ox:ox + w] = rgb
        found = find_cell(canvas)
        assert found is not None, path.name
        assert np.hypot(found.cx - (box.cx + ox), found.cy - (box.cy + oy)) < 0.5 * box.radius, (path.name, found)
        assert 0.7 < found.radius / box.radius < 1.7, (path.name, found, box)


def test_a_crop_padded_black_where_the_field_ended_is_found_on_the_cell():
    """A lab's padding: the picture shifted to one corner, black where the field ended."""
    for path in framing_paths("pbc")[::2] + framing_paths("raabin")[::2]:
        rgb = load(path)
        box = find_cell(rgb)
        shift = rgb.shape[0] // 4
        padded = np.zeros_like(rgb)
        padded[shift:, shift:] = rgb[:-shift, :-shift]
        found = find_cell(padded)
        assert found is not None, path.name
        assert np.hypot(found.cx - box.cx - shift, found.cy - box.cy - shift) < 0.4 * box.radius, (path.name, found)


def test_no_cell_in_a_blank_field():
    plasma = np.median(load(framing_paths("pbc")[0])[:20, :20].reshape(-1, 3), axis=0).astype(np.uint8)
    blank = np.broadcast_to(plasma, (224, 224, 3)).copy()
    noisy = np.clip(blank + np.random.default_rng(0).normal(0, 3, blank.shape), 0, 255).astype(np.uint8)
    for image in [blank, noisy, np.zeros_like(blank), np.full_like(blank, 255)]:
        assert find_cell(image) is None


def test_crop_square_is_centred_and_fills_with_plasma_beyond_the_edge():
    rgb = load(framing_paths("pbc")[0])
    box = CellBox(cx=100.0, cy=120.0, radius=30.0)
    crop = crop_square(rgb, box, 1.5)
    assert crop.shape == (90, 90, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, rgb[75:165, 55:145])
    corner = CellBox(cx=5.0, cy=5.0, radius=40.0)
    plasma, edge = crop_square(rgb, corner, 1.5), crop_square(rgb, corner, 1.5, fill="edge")
    assert plasma.shape == edge.shape == (120, 120, 3)
    assert np.array_equal(plasma[55:, 55:], rgb[:65, :65]) and np.array_equal(edge[55:, 55:], rgb[:65, :65])
    # The fill is the picture's pale plasma, not black, not a smear of the edge.
    assert plasma[:55, :55].std(axis=(0, 1)).max() == 0 and plasma[0, 0].sum() > 3 * 200
    # A box wholly outside the picture still gives a square.
    assert crop_square(rgb, CellBox(cx=-50.0, cy=400.0, radius=10.0), 1.5).shape == (30, 30, 3)


def test_the_plasma_colour_is_the_one_worked_out_in_floats():
    # cellbox.plasma_colour works in whole numbers and finds the 90th percentile by np.partition;
    # it must give the colour of the float formula it replaced (np.ptp, np.quantile "nearest").
    from wbcnet.cells.cellbox import _PAD_MAX_RANGE, _PAD_MAX_VALUE, plasma_colour

    def in_floats(rgb):
        factor = max(1, -(-max(rgb.shape[:2]) // 32))
        small = Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor) if factor > 1 else rgb
        pixels = np.asarray(small, dtype=np.float32).reshape(-1, 3)
        pixels = pixels[~((pixels.max(1) < _PAD_MAX_VALUE) & (np.ptp(pixels, axis=1) < _PAD_MAX_RANGE))]
        if pixels.size == 0:
            return np.zeros(3, np.uint8)
        brightness = pixels.sum(1)
        palest = pixels[brightness >= np.quantile(brightness, 0.9, method="nearest")]
        return np.median(palest, axis=0).round().astype(np.uint8)

    rng = np.random.default_rng(0)
    pictures = [load(p) for name in ("raabin", "pbc", "bccd") for p in framing_paths(name)]
    pictures += [rng.integers(0, 256, (int(rng.integers(1, 80)), int(rng.integers(1, 80)), 3), dtype=np.uint8)
                 for _ in range(300)]
    pictures += [np.zeros((40, 50, 3), np.uint8), np.full((3, 3, 3), 255, np.uint8)]
    for rgb in pictures:
        assert np.array_equal(plasma_colour(rgb), in_floats(rgb)), rgb.shape


def test_odd_inputs():
    with pytest.raises(ValueError):
        find_cell(np.zeros((50, 50), np.uint8))
    with pytest.raises(ValueError):
        find_cell(np.zeros((50, 50, 3), np.float32))
    tiny = np.asarray(Image.fromarray(load(framing_paths("pbc")[0])).resize((24, 24)))
    find_cell(tiny)  # any answer, no crash
    wide = load(framing_paths("pbc")[0])[40:160]
    assert find_cell(wide) is not None


def test_find_cells_in_a_field_made_of_crops():
    crops = [load(p) for p in framing_paths("pbc")[1::3]]
    field = np.empty((480, 640, 3), np.uint8)
    field[...] = np.median(crops[0][:20, :20].reshape(-1, 3), axis=0)
    expected = []
    for crop, (y, x) in zip(crops, [(0, 0), (0, 416), (256, 200)]):
        field[y:y + 224, x:x + 224] = crop
        box = find_cell(crop)
        expected.append((box.cx + x, box.cy + y, box.radius))
    found = find_cells(field)
    assert len(found) == len(expected)
    for cx, cy, r in expected:
        assert min(np.hypot(b.cx - cx, b.cy - cy) for b in found) < 0.4 * r


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "bccd-fields").is_dir(), reason="../shared/datasets is not here")
def test_find_cells_on_bccd_fields():
    """Every annotated white cell of BCCD's 364 fields, counted found when a box's centre falls in
    its (loose, hand-drawn) annotation box."""
    root = SHARED / "bccd-fields"
    boxes: dict[str, list[tuple[int, ...]]] = {}
    with open(root / "wbc_boxes.csv") as f:
        for row in csv.DictReader(f):
            boxes.setdefault(row["file"], []).append(tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1")))
    hits = total = extra = 0
    for path in sorted((root / "images").glob("*.jpg")):
        found = find_cells(load(path))
        truth = boxes.get(path.name, [])
        inside = [[x0 - 10 <= b.cx <= x1 + 10 and y0 - 10 <= b.cy <= y1 + 10 for b in found] for x0, y0, x1, y1 in truth]
        hits += sum(any(row) for row in inside)
        total += len(truth)
        extra += sum(not any(col) for col in zip(*inside)) if truth else len(found)
    assert hits >= 0.97 * total, (hits, total)
    assert extra <= 0.05 * total, extra  # most of these are real cells the annotators left out
