"""The learned cell finder (wbcnet.cells.finder, reached through wbcnet.cells.locate) on real pictures
the repository ships: six BCCD fields with their boxes (tests/data/fields), the bundled
Raabin-WBC sample, PBC and BCCD crops (tests/data/framings); degraded copies of them; blank
fields; and a tiny training run."""
import csv
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE
from test_locate import framing_paths
from wbcnet.cells.locate import find_cell, find_cells, get_finder
from wbcnet.core.errors import WbcnetError
from wbcnet.inference.count import match_boxes
from wbcnet.evaluation.finder import FIELD_STRESSES, STRESSES, stress
from wbcnet.cells.finder.net import load_finder

FIELDS = Path(__file__).resolve().parent / "data" / "fields"


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def fields_with_boxes():
    boxes: dict[str, list] = {}
    with open(FIELDS / "wbc_boxes.csv") as fh:
        for row in csv.DictReader(fh):
            boxes.setdefault(row["file"], []).append([float(row[k]) for k in ("x0", "y0", "x1", "y1")])
    return [(load(FIELDS / name), np.array(b)) for name, b in sorted(boxes.items())]


def found_boxes(rgb) -> np.ndarray:
    return np.array([[c.cx - c.radius, c.cy - c.radius, c.cx + c.radius, c.cy + c.radius] for c in find_cells(rgb)]).reshape(-1, 4)


def detection(pairs) -> tuple[float, float]:
    true = found = matched = 0
    for rgb, truth in pairs:
        mine = found_boxes(rgb)
        true, found, matched = true + len(truth), found + len(mine), matched + len(match_boxes(list(mine), list(truth)))
    return matched / true, matched / max(found, 1)


def test_every_boxed_white_cell_of_the_bundled_fields_is_found():
    recall, precision = detection(fields_with_boxes())
    # 8 boxes on 6 fields; one is a 31 px sliver of a cell at the bottom edge of BloodImage_00113
    assert recall >= 7 / 8 and precision >= 0.8, (recall, precision)


@pytest.mark.parametrize("kind", STRESSES)
def test_fields_degraded_to_each_extreme_still_give_their_cells(kind):
    pairs = fields_with_boxes()
    others = [(rgb, b) for rgb, b in pairs]
    degraded = [stress(rgb, kind, b, others[i + 1:] + others[:i]) for i, (rgb, b) in enumerate(pairs)]
    recall, _ = detection(degraded)
    assert recall >= 0.75, (kind, recall)


def test_blank_fields_give_no_cells():
    rgb, _ = fields_with_boxes()[0]
    plasma = np.median(rgb.reshape(-1, 3), axis=0).astype(np.uint8)
    assert find_cells(np.broadcast_to(plasma, (480, 640, 3)).copy()) == []
    assert find_cells(np.full((480, 640, 3), 255, np.uint8)) == []
    assert find_cells(np.zeros((900, 1440, 3), np.uint8)) == []


@pytest.mark.parametrize("framing", ["raabin", "pbc", "bccd"])
def test_each_lab_s_crop_gives_the_cell_the_threshold_finder_gives(framing):
    # tests/test_locate.py checks the threshold finder's circles on these crops (BCCD's are not
    # all centred on their cell); the learned finder must find the same cell, at a similar size.
    from wbcnet.cells.classic import find_cell as classic

    for path in framing_paths(framing):
        rgb = load(path)
        box, known = find_cell(rgb), classic(rgb)
        assert box is not None, path
        assert np.hypot(box.cx - known.cx, box.cy - known.cy) <= 0.5 * known.radius, (path, box, known)
        assert 0.5 <= box.radius / known.radius <= 1.5, (path, box, known)


def test_a_cell_is_found_in_the_middle_of_every_bundled_sample_cell():
    paths = sorted(SAMPLE.glob("*/*.jpg"))
    central = 0
    for path in paths:
        rgb = load(path)
        box = find_cell(rgb)
        h, w = rgb.shape[:2]
        central += box is not None and abs(box.cx - w / 2) <= w / 4 and abs(box.cy - h / 2) <= h / 4
    assert central / len(paths) >= 0.98, central


def test_a_pale_copy_of_a_crop_still_gives_its_cell():
    # The never-seen lab of issue 18: nucleus contrast a fifth of Raabin-WBC's, 49 grey levels.
    for path in framing_paths("raabin")[:5]:
        rgb = load(path)
        pale, _ = stress(rgb, "contrast x0.2", np.zeros((0, 4)))
        pale, _ = stress(pale, "50 grey levels", np.zeros((0, 4)))
        box = find_cell(pale)
        h, w = rgb.shape[:2]
        assert box is not None and abs(box.cx - w / 2) <= w / 4 and abs(box.cy - h / 2) <= h / 4, path


def test_many_pictures_are_cropped_by_the_learned_finder_in_threads():
    # torch in a process forked from one whose OpenMP threads had run hangs, so the learned
    # finder's crops are made in threads (the threshold finder's in forked processes).
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from wbcnet.data.cache import _pool, decode_images
    from wbcnet.cells.preprocess import Preprocess

    learned, classic = Preprocess(112, crop="cell"), Preprocess(112, crop="cell", finder="classic")
    with _pool(2, 300, learned) as pool:
        assert isinstance(pool, ThreadPoolExecutor)
    with _pool(2, 300, classic) as pool:
        assert isinstance(pool, ProcessPoolExecutor) or "fork" not in multiprocessing.get_all_start_methods()
    paths = [str(p) for p in sorted(SAMPLE.glob("*/*.jpg"))][:260]
    decoded = decode_images(paths, learned, workers=2, progress=False)
    assert decoded.images.shape == (260, 3, 112, 112) and decoded.found.all()


def mixed_pictures() -> list[np.ndarray]:
    """Single-cell pictures of many sizes: the Raabin-WBC sample at 224 px and three enlarged to
    575 (Raabin-WBC's originals), PBC's crops, BCCD's (169-324 px), a wide strip of one, and a
    blank picture of plasma, which has no cell."""
    raabin = [load(p) for p in framing_paths("raabin")]
    big = [np.asarray(Image.fromarray(r).resize((575, 575), Image.Resampling.BICUBIC)) for r in raabin[:3]]
    pbc = [load(p) for p in framing_paths("pbc")[:4]]
    bccd = [load(p) for p in framing_paths("bccd")]
    plasma = np.median(pbc[0][:20, :20].reshape(-1, 3), axis=0).astype(np.uint8)
    blank = np.broadcast_to(plasma, (224, 224, 3)).copy()
    return raabin[:4] + big + [blank] + pbc + bccd + [pbc[0][40:160]] + raabin[4:]


def test_a_batch_of_pictures_gives_the_cells_each_gives_alone():
    # predict, evaluate and training's decode run the finder on a batch of pictures at once
    # (data/cache.py's chunks); one picture's numbers differ from a batch's in the 6th or 7th digit
    # (torch's slow path against oneDNN), so centres within 1e-3 px, and the crops the same.
    from wbcnet.cells.locate import crop_square, find_cell_batch

    pictures = mixed_pictures()
    alone = [find_cell(rgb) for rgb in pictures]
    assert alone[7] is None and sum(b is None for b in alone) == 1  # the blank one only
    for batch in (find_cell_batch(pictures), find_cell_batch(pictures[::-1])[::-1], find_cell_batch(pictures[:9])):
        for rgb, one, many in zip(pictures, alone, batch):
            assert (one is None) == (many is None)
            if one is not None:
                assert max(abs(one.cx - many.cx), abs(one.cy - many.cy), abs(one.radius - many.radius)) < 1e-3
                assert np.array_equal(crop_square(rgb, one), crop_square(rgb, many))
    assert find_cell_batch([]) == []
    assert find_cell_batch(pictures[:3], "classic") == [find_cell(rgb, "classic") for rgb in pictures[:3]]


def test_the_batched_inputs_are_the_inputs_made_one_at_a_time(tmp_path):
    # decode_images hands each thread a chunk of paths (load_inputs): the model inputs, the
    # found flags and the unreadable files must be those of load_input one path at a time.
    from wbcnet.cells.preprocess import Preprocess, load_input, load_inputs
    from wbcnet.core.imageio import ImageReadError
    from wbcnet.data.cache import decode_images

    paths = []
    for i, rgb in enumerate(mixed_pictures()):
        paths.append(str(tmp_path / f"{i:02d}.png"))
        Image.fromarray(rgb).save(paths[-1])
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    paths.insert(5, str(tmp_path / "broken.jpg"))
    prep = Preprocess(112, crop="cell")
    made = load_inputs(paths, prep)
    assert isinstance(made[5], ImageReadError)
    with pytest.raises(ImageReadError):
        load_input(paths[5], prep)
    alone = [load_input(p, prep) for i, p in enumerate(paths) if i != 5]
    assert [f for _, f in alone].count(False) == 1  # the blank picture: no cell, the whole picture
    for (arr, found), (a, f) in zip(alone, [m for i, m in enumerate(made) if i != 5]):
        assert found == f and np.array_equal(arr, a)
    for workers in (1, 3):
        decoded = decode_images(paths, prep, workers=workers, progress=False)
        assert decoded.index.tolist() == [i for i in range(len(paths)) if i != 5]
        assert decoded.errors == [(paths[5], made[5].reason)]
        assert np.array_equal(decoded.images, np.stack([a.transpose(2, 0, 1) for a, _ in alone]))
        assert decoded.found.tolist() == [f for _, f in alone]


def test_paths_are_dealt_to_the_threads_in_even_chunks():
    from wbcnet.data.cache import chunks

    for n in (0, 1, 2, 5, 31, 32, 33, 64, 65, 260, 2000):
        for workers in (1, 2, 8):
            parts = chunks(n, workers)
            assert [i for part in parts for i in part] == list(range(n))
            assert all(1 <= len(part) <= 32 for part in parts)
            sizes = [len(part) for part in parts] or [0]
            assert len(parts) >= min(workers, n) and max(sizes) - min(sizes) <= 1


def test_the_background_s_running_min_is_the_min_pool_it_replaced():
    import torch
    import torch.nn.functional as F

    from wbcnet.cells.finder.net import _running_min

    gen = torch.Generator().manual_seed(0)
    for shape in [(32, 3, 24, 24), (1, 3, 80, 120), (2, 3, 7, 5), (1, 3, 1, 1)]:
        for k in (1, 3, 33, 35):
            x = torch.randn(shape, generator=gen)
            pooled = -F.max_pool2d(F.max_pool2d(-x, (k, 1), 1, (k // 2, 0)), (1, k), 1, (0, k // 2))
            assert torch.equal(_running_min(_running_min(x, k, 2), k, 3), pooled), (shape, k)


def test_damaged_or_unchecked_finder_weights_are_refused(tmp_path):
    import shutil

    from wbcnet.cells.finder.paths import SHIPPED, SHIPPED_JSON

    stem = tmp_path / "f"
    shutil.copy(SHIPPED, stem.with_suffix(".safetensors"))
    shutil.copy(SHIPPED_JSON, stem.with_suffix(".json"))
    load_finder(stem)  # a clean copy loads
    data = bytearray((tmp_path / "f.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "f.safetensors").write_bytes(bytes(data))
    with pytest.raises(WbcnetError, match="SHA-256"):
        load_finder(stem)
    doc = json.loads((tmp_path / "f.json").read_text())
    del doc["weights_sha256"]
    (tmp_path / "f.json").write_text(json.dumps(doc))
    with pytest.raises(WbcnetError, match="weights_sha256"):
        load_finder(stem)


def test_a_tiny_training_run_writes_a_finder_that_loads_and_runs(tmp_path):
    from wbcnet.data.fields import load_cell_pictures, load_fields
    from wbcnet.training.finder import FinderTrainConfig, fit

    cells = load_cell_pictures(SAMPLE, "raabin", 40, 0, tmp_path / "cache", progress=False)
    assert len(cells) >= 30  # the threshold finder is sure of most sample cells
    fields = load_fields(FIELDS, FIELDS / "wbc_boxes.csv")
    out = fit([cells, fields], FinderTrainConfig(steps=3, batch_size=4, canvas=64), tmp_path / "tiny", progress=False)
    finder = load_finder(out)
    assert finder.config.trained_on == ("bccd", "raabin")
    assert isinstance(finder.find_cells(load(FIELDS / "BloodImage_00000.jpg")), list)


# Each of issue 27's degradations alone (the three at once, the benchmark's stand-in for the
# held-back lab, is scored in benchmarks/results/finder.md, not asserted here).
@pytest.mark.parametrize("kind", [k for k in FIELD_STRESSES if "+" not in k])
def test_fields_rescaled_defocused_and_unevenly_lit_still_give_their_cells(kind):
    pairs = [stress(rgb, kind, b) for rgb, b in fields_with_boxes()]
    recall, precision = detection(pairs)
    assert recall >= 6 / 8 and precision >= 0.6, (kind, recall, precision)


def test_the_finder_reads_each_field_s_scale_from_the_field_itself():
    # No threshold ruler: the network's own reading of the red cells' size must follow the
    # picture's magnification (BCCD's red-cell boxes are ~110 px across at 640 x 480).
    finder = get_finder()
    for path in sorted(FIELDS.glob("*.jpg"))[:3]:
        rgb = load(path)
        base = finder.search_field(rgb).red_cell_px
        assert 70 < base < 160, (path.name, base)
        for f in (0.4, 2.5):
            h, w = rgb.shape[:2]
            scaled = np.asarray(Image.fromarray(rgb).resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS))
            got = finder.search_field(scaled).red_cell_px
            assert abs(np.log(got / (base * f))) < np.log(1.35), (path.name, f, got, base * f)


def test_a_field_search_keeps_what_it_rejected_apart_from_its_cells():
    search = get_finder().search_field(load(FIELDS / "BloodImage_00000.jpg"))
    threshold = get_finder().config.threshold
    assert all(c.score >= threshold for c in search.cells)
    assert all(c.score < threshold for c in search.rejected)


def write_points(path, names):
    with open(FIELDS / "wbc_boxes.csv") as fh, open(path, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["file", "x", "y", "kind"])
        for row in csv.DictReader(fh):
            if row["file"] in names:
                w.writerow([row["file"], (float(row["x0"]) + float(row["x1"])) / 2,
                            (float(row["y0"]) + float(row["y1"])) / 2, "wbc"])
        w.writerow([names[0], 5, 5, "not"])


def test_a_finder_taught_a_few_fields_is_saved_and_used_by_count(tmp_path):
    from wbcnet.cli.main import main

    points = tmp_path / "points.csv"
    write_points(points, ["BloodImage_00000.jpg", "BloodImage_00001.jpg", "BloodImage_00003.jpg"])
    lab = tmp_path / "my-lab"
    assert main(["finder", "adapt", "--fields", str(FIELDS), "--points", str(points), "--out", str(lab),
                 "--steps", "3", "--no-progress"]) == 0
    assert sorted(p.name for p in lab.iterdir()) == ["best.json", "best.safetensors", "finder.json",
                                                      "finder.safetensors"]
    taught = load_finder(lab / "finder")
    assert taught.config.extra["adapted_from"] == load_finder().config.name
    assert not list(tmp_path.glob(".my-lab*"))  # no partial folder left
    out = tmp_path / "count"
    assert main(["count", str(FIELDS / "*.jpg"), "--checkpoint", str(lab), "--out", str(out), "--no-progress",
                 "--no-fields"]) in (0, 3)
    assert json.loads((out / "count.json").read_text())["finder"] == str(lab / "finder")
    # A second teaching into the same folder is refused, and the model there kept.
    assert main(["finder", "adapt", "--fields", str(FIELDS), "--points", str(points), "--out", str(lab),
                 "--steps", "3", "--no-progress"]) == 2
    assert load_finder(lab / "finder").sha256 == taught.sha256


@pytest.mark.parametrize("text, message", [
    ("file,x,y,kind\nBloodImage_00000.jpg,10,10,maybe\n", "line 2: kind 'maybe' is not one of wbc, not"),
    ("file,x,y\nBloodImage_00000.jpg,ten,10\n", "line 2: x and y must be numbers"),
    ("name,x,y\n", "needs the columns file,x,y"),
    ("file,x,y,kind\nnot_there.jpg,10,10,wbc\n", "not_there.jpg: a points file names this field"),
])
def test_bad_points_are_refused_in_one_line(tmp_path, capsys, text, message):
    from wbcnet.cli.main import main

    (tmp_path / "p.csv").write_text(text)
    assert main(["finder", "adapt", "--fields", str(FIELDS), "--points", str(tmp_path / "p.csv"),
                 "--out", str(tmp_path / "lab"), "--steps", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "lab").exists()
