"""wbcnet count on real smear fields: six BCCD fields in tests/data/fields (CREDITS.md there)
with their hand-drawn boxes, classified by the shipped model."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wbcnet.cli.main import main
from wbcnet.inference.count import differential, is_cut_by_edge, match_boxes
from wbcnet.cells.locate import CellBox, find_cells
from wbcnet.core.results import CellResult

from browser import chrome, console_errors, page_state

FIELDS = Path(__file__).parent / "data" / "fields"
TRUTH = FIELDS / "wbc_boxes.csv"
CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    out = tmp_path_factory.mktemp("count") / "out"
    code = main(["count", str(FIELDS / "*.jpg"), "--out", str(out), "--truth", str(TRUTH), "--target", "100",
                 "--no-progress"])
    return code, out


def test_count_writes_cells_differential_fields_and_truth_scores(counted, capsys):
    code, out = counted
    assert code == 0
    rows = list(csv.DictReader(open(out / "cells.csv")))
    assert {"file", "x0", "y0", "x1", "y1", "predicted", "confidence", "flag"} <= set(rows[0])
    assert all(f"p_{c}" in rows[0] for c in CLASSES)
    assert len({r["file"] for r in rows}) == 6  # every field has a white cell
    for r in rows:
        assert 0 <= int(r["x0"]) < int(r["x1"]) <= 640 and 0 <= int(r["y0"]) < int(r["y1"]) <= 480
        assert abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-3
        assert r["predicted"] in CLASSES + ["refer"]
    # BloodImage_00001's neutrophil runs off the bottom of the field: listed, flagged, not counted.
    cut = [r for r in rows if r["file"].endswith("BloodImage_00001.jpg")]
    assert cut and all(r["flag"] == "edge" for r in cut)

    diff = json.loads((out / "differential.json").read_text())
    counted_rows = [r for r in rows if r["flag"] == ""]
    assert diff["counted"] == len(counted_rows) == sum(v["count"] for v in diff["classes"].values())
    assert diff["edge_skipped"] == sum(r["flag"] == "edge" for r in rows)
    assert abs(sum(v["percent"] for v in diff["classes"].values()) - 100) < 1e-6
    for v in diff["classes"].values():
        assert v["ci_low"] <= v["percent"] <= v["ci_high"]
    table = list(csv.DictReader(open(out / "differential.csv")))
    assert [r["class"] for r in table] == CLASSES

    summary = json.loads((out / "count.json").read_text())
    assert summary["target"] == {"cells": 100, "reached": False}
    assert summary["warnings"] == []  # colour fields: nothing to warn of
    truth = json.loads((out / "truth.json").read_text())
    assert truth["true_boxes"] == 8 and truth["fields_scored"] == 6
    assert truth["recall"] >= 0.85 and truth["precision"] >= 0.85
    assert truth["typed_matches"] == 4 and truth["type_accuracy"] is not None
    assert sorted(p.name for p in (out / "fields").iterdir()) == sorted(p.stem + ".jpg" for p in FIELDS.glob("*.jpg"))
    html = (out / "count.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I) and "<script" not in html.lower()
    assert "NOT reached" in html and "Against the hand-drawn boxes" in html


def test_count_html_renders_in_headless_chromium(counted, tmp_path):
    _, out = counted
    with chrome(tmp_path / "profile") as driver:
        driver.get((out / "count.html").resolve().as_uri())
        state = page_state(driver)
        assert state["ready"] == "complete" and state["title"] == "wbcnet count"
        assert len(state["images"]) >= 1 + 6 + 3  # the chart, the fields, a few cells
        broken = [alt for alt, complete, width in state["images"] if not (complete and width > 0)]
        assert not broken, f"images that did not load: {broken}"
        assert not console_errors(driver)
        driver.save_screenshot(str(out / "count_screenshot.png"))


def test_an_unreadable_field_is_listed_and_the_rest_counted(tmp_path, capsys):
    shutil.copy(FIELDS / "BloodImage_00000.jpg", tmp_path / "good.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["count", str(tmp_path / "good.jpg"), str(tmp_path / "broken.jpg"), "--out", str(tmp_path / "out"),
                 "--no-progress", "--no-fields"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "cells.csv")))
    bad = [r for r in rows if r["file"].endswith("broken.jpg")]
    assert len(bad) == 1 and bad[0]["flag"].startswith("unreadable") and bad[0]["predicted"] == ""
    assert any(r["file"].endswith("good.jpg") and r["predicted"] for r in rows)
    assert "unreadable" in capsys.readouterr().err
    # Nothing readable at all: exit 1; the out folder now holds files: refused without --overwrite.
    assert main(["count", str(tmp_path / "broken.jpg"), "--out", str(tmp_path / "out2"), "--no-progress"]) == 1
    assert main(["count", str(tmp_path / "good.jpg"), "--out", str(tmp_path / "out"), "--no-progress"]) == 2


def test_a_confidence_above_one_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["count", str(FIELDS / "BloodImage_00000.jpg"), "--out", str(tmp_path / "o"), "--min-confidence", "1.5"])
    assert "--min-confidence: 1.5 must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["--target", "0"], "--target"),
    (["--truth", "nope.csv"], "--truth"),
])
def test_bad_count_flags_are_refused_before_any_work(tmp_path, capsys, argv, message):
    assert main(["count", str(FIELDS / "BloodImage_00000.jpg"), "--out", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_truth_file_without_box_columns_is_named(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("name,label\nBloodImage_00000.jpg,Neutrophil\n")
    assert main(["count", str(FIELDS / "BloodImage_00000.jpg"), "--out", str(tmp_path / "o"), "--truth",
                 str(tmp_path / "t.csv"), "--no-progress"]) == 2
    assert "t.csv: a truth file needs the columns" in capsys.readouterr().err


def test_match_boxes_is_one_to_one_and_takes_a_centre_inside_a_loose_box():
    true = [(0, 0, 100, 100), (200, 200, 260, 260)]
    # A small box deep inside the first true box (IoU 0.04, centre inside) matches it; a second
    # found box on the same cell does not match twice; a box far from both matches nothing.
    found = [(40, 40, 60, 60), (30, 30, 70, 70), (400, 400, 450, 450), (205, 205, 255, 255)]
    pairs = dict(match_boxes(found, true))
    assert pairs.get(3) == 1
    assert sorted(pairs.values()) == [0, 1] and 2 not in pairs
    assert match_boxes([], true) == [] and match_boxes(found, []) == []
    # IoU >= 0.3 matches even when the found centre lies outside the true box (IoU 0.4 here) ...
    assert match_boxes([(0, 0, 100, 100)], [(0, 0, 100, 40)]) == [(0, 0)]
    # ... and neither rule holding (IoU 0.18, centre outside) is no match.
    assert match_boxes([(70, 0, 170, 100)], [(0, 0, 100, 100)]) == []


def test_edge_and_differential_rules():
    assert is_cut_by_edge(CellBox(cx=30, cy=200, radius=50), 640, 480)
    assert is_cut_by_edge(CellBox(cx=320, cy=433, radius=50), 640, 480)  # 3.5% of r from the bottom
    assert not is_cut_by_edge(CellBox(cx=320, cy=240, radius=50), 640, 480)
    assert not is_cut_by_edge(CellBox(cx=60, cy=240, radius=50), 640, 480)  # 20% of r from the left

    def cell(k, edge=False, referred=False):
        probs = {c: 0.96 if i == k else 0.01 for i, c in enumerate(CLASSES)}
        return CellResult("f.jpg", CLASSES[k], 0.96, probs, referred, box=(0, 0, 10, 10), edge=edge)

    diff = differential([cell(0), cell(4), cell(4), cell(4, edge=True), cell(2, referred=True)], CLASSES).to_dict()
    assert diff["counted"] == 3 and diff["edge_skipped"] == 1 and diff["referred"] == 1
    assert diff["classes"]["Neutrophil"]["count"] == 2
    assert diff["classes"]["Lymphocyte"]["referred"] == 1 and diff["classes"]["Lymphocyte"]["count"] == 0
    assert diff["classes"]["Basophil"]["ci_low"] < 100 / 3 < diff["classes"]["Basophil"]["ci_high"]


def test_find_cells_keeps_working_at_a_lower_magnification():
    """Four fields at half size in one 640x480 picture, as a 2x wider field of view shows them:
    the red cells set the working scale, so the small white cells are still found."""
    names = ["BloodImage_00000.jpg", "BloodImage_00003.jpg", "BloodImage_00010.jpg", "BloodImage_00020.jpg"]
    boxes = {}
    for row in csv.DictReader(open(TRUTH)):
        boxes.setdefault(row["file"], []).append([int(row[k]) for k in ("x0", "y0", "x1", "y1")])
    canvas = np.zeros((480, 640, 3), np.uint8)
    expected = []
    for j, name in enumerate(names):
        ox, oy = (j % 2) * 320, (j // 2) * 240
        canvas[oy:oy + 240, ox:ox + 320] = np.asarray(Image.open(FIELDS / name).convert("RGB").resize((320, 240)))
        expected += [(x0 / 2 + ox, y0 / 2 + oy, x1 / 2 + ox, y1 / 2 + oy) for x0, y0, x1, y1 in boxes[name]]
    found = find_cells(canvas)
    hits = sum(any(x0 <= b.cx <= x1 and y0 <= b.cy <= y1 for b in found) for x0, y0, x1, y1 in expected)
    assert hits == len(expected) == 5
    assert len(found) <= len(expected) + 1


def mounted_tmpfs(folder: Path, size: str):
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 300 kB tmpfs (root only): a count of the six fields fills it."""
    yield from mounted_tmpfs(tmp_path / "disk", "300k")


def test_a_count_into_a_mount_point_of_another_file_system(tmp_path):
    """--out is a file system of its own: the finished folder can't be renamed onto it, so its
    files are moved in, count.json last, and nothing is left beside it."""
    for out in mounted_tmpfs(tmp_path / "mnt", "8m"):
        assert main(["count", str(FIELDS / "BloodImage_00000.jpg"), "--out", str(out), "--no-progress"]) == 0
        assert {"cells.csv", "differential.csv", "differential.json", "count.json", "count.html", "fields"} <= \
            {p.name for p in out.iterdir()}
        assert [p.name for p in tmp_path.iterdir()] == ["mnt"]


def test_a_full_disk_is_one_line_and_leaves_no_finished_looking_count(small_disk, capsys):
    out = small_disk / "out"
    assert main(["count", str(FIELDS / "*.jpg"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"wbcnet count: error: {out}: cannot write the count (no space left on the " \
                                           f"device); nothing of it was kept"
    # Nothing that looks like a result, and the unfinished files are gone (the space is free again).
    assert [p.name for p in small_disk.iterdir()] == ["out"] and not any(out.iterdir())


def test_a_killed_count_leaves_no_differential_without_count_json(tmp_path):
    """Killed just before its outputs would have appeared: OUT is empty, the files wait in a
    hidden folder beside it, and nothing in OUT looks like a finished count."""
    out = tmp_path / "out"
    code = ("import os, sys; import wbcnet.render.count as rc; "
            "rc.CountOutput._move_into_place = lambda self: os._exit(9); "
            "from wbcnet.cli.main import main; main(sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", code, "count", str(FIELDS / "BloodImage_00000.jpg"), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 9, done.stderr
    assert out.is_dir() and not any(out.iterdir())
    (hidden,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.unfinished-")]
    assert {"cells.csv", "differential.csv", "differential.json", "count.json"} <= {p.name for p in hidden.iterdir()}
    # The same --out can be used again once emptied; the next count into it clears the killed one's
    # hidden folder (its process is gone) and leaves nothing hidden behind.
    assert main(["count", str(FIELDS / "BloodImage_00000.jpg"), "--out", str(out), "--no-progress"]) == 0
    assert (out / "count.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_each_field_is_decoded_once(tmp_path, monkeypatch):
    """Found, drawn into fields/ and shown in count.html from one decode per field."""
    import wbcnet.inference.count as count
    import wbcnet.render.count as render_count
    import wbcnet.render.count_report as report

    seen = []
    real = count.load_rgb

    def counting(path, *a, **kw):
        seen.append(Path(path).name)
        return real(path, *a, **kw)

    monkeypatch.setattr(count, "load_rgb", counting)
    assert not hasattr(render_count, "load_rgb") and not hasattr(report, "load_rgb")
    assert main(["count", str(FIELDS / "*.jpg"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert sorted(seen) == sorted(p.name for p in FIELDS.glob("*.jpg"))
    assert len(list((tmp_path / "out" / "fields").iterdir())) == 6


def test_a_greyscale_field_is_said_to_be_unreliable(tmp_path, capsys):
    Image.open(FIELDS / "BloodImage_00000.jpg").convert("L").save(tmp_path / "grey.jpg")
    shutil.copy(FIELDS / "BloodImage_00003.jpg", tmp_path / "colour.jpg")
    out = tmp_path / "out"
    assert main(["count", str(tmp_path / "grey.jpg"), str(tmp_path / "colour.jpg"), "--out", str(out),
                 "--no-progress", "--no-fields"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 of 2 fields are greyscale (grey.jpg" in err and "colour pictures" in err
    summary = json.loads((out / "count.json").read_text())
    assert [w for w in summary["warnings"] if "greyscale" in w]
    assert "greyscale" in (out / "count.html").read_text()


def test_a_folder_of_blank_fields_warns_and_exits_non_zero(tmp_path, capsys):
    # Unstained fields (no white cell, nothing stained): the count must say it found nothing,
    # in its output and count.json, and not exit 0 as if an empty differential were a count.
    rgb = np.asarray(Image.open(FIELDS / "BloodImage_00000.jpg").convert("RGB"))
    plasma = np.median(rgb.reshape(-1, 3), axis=0).astype(np.uint8)
    folder = tmp_path / "blank"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.broadcast_to(plasma, (480, 640, 3)).copy()).save(folder / f"blank_{i}.jpg", quality=90)
    Image.fromarray(np.full((480, 640, 3), 255, np.uint8)).save(folder / "white.png")
    out = tmp_path / "out"
    assert main(["count", str(folder), "--out", str(out), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "warning: no white cell was found in any of the 7 readable fields" in err
    summary = json.loads((out / "count.json").read_text())
    assert summary["cells_found"] == 0 and any("no white cell" in w for w in summary["warnings"])
    assert "no white cell was found" in (out / "count.html").read_text()


def test_few_cells_for_many_fields_is_said():
    from wbcnet.inference.count import count_warnings
    from wbcnet.core.results import FieldResult

    fields = [FieldResult(f"f{i}.jpg", 640, 480) for i in range(20)]
    assert count_warnings(fields)[0].startswith("no white cell was found in any of the 20")
    fields[0].cells = [object()]  # one cell in twenty fields
    assert count_warnings(fields)[0].startswith("only 1 white cells were found in 20 fields")
    for f in fields[:10]:
        f.cells = [object()]
    assert count_warnings(fields) == []


def red_cells_only_field() -> np.ndarray:
    """A 640 x 480 field of BCCD red cells with no white cell: BloodImage_00000's left 250 columns
    (its one white cell is boxed from x = 260), mirrored out to the full width."""
    rgb = np.asarray(Image.open(FIELDS / "BloodImage_00000.jpg").convert("RGB"))[:, :250]
    return np.concatenate([rgb, rgb[:, ::-1], rgb[:, :140]], axis=1)


def test_a_field_of_red_cells_only_gives_no_counted_white_cell_and_warns(tmp_path, capsys):
    Image.fromarray(red_cells_only_field()).save(tmp_path / "red_only.jpg", quality=92)
    out = tmp_path / "out"
    assert main(["count", str(tmp_path / "red_only.jpg"), "--out", str(out), "--no-progress", "--no-fields"]) == 3
    summary = json.loads((out / "count.json").read_text())
    assert summary["counted"] == 0 and summary["cells_found"] == 0
    assert "warning: no white cell was found" in capsys.readouterr().err
    assert summary["warnings"]


def test_implausibly_many_white_cells_are_said_and_the_fields_named():
    from wbcnet.inference.count import count_warnings, is_implausible
    from wbcnet.core.results import FieldResult

    # A 1440 x 900 field with red cells 85 px across has room for ~230 of them: 30 "white cells"
    # there is one per 8, far past blood's one per 500-1,000; 3 is plausible anywhere.
    assert is_implausible(30, 1440, 900, 85.0) and not is_implausible(3, 1440, 900, 85.0)
    assert not is_implausible(20, 1440, 900, 30.0)  # a low magnification: ~1,800 red cells' room
    fields = [FieldResult(f"f{i}.jpg", 1440, 900, cells=[object()] * (40 if i < 2 else 1), red_cell_px=85.0,
                          implausible=i < 2) for i in range(6)]
    text = [w for w in count_warnings(fields) if w.startswith("implausibly many")]
    assert text and "2 of 6 fields" in text[0] and "f0.jpg, f1.jpg" in text[0]


def test_an_unsure_scale_is_said_and_the_fields_named():
    from wbcnet.inference.count import count_warnings
    from wbcnet.core.results import FieldResult

    fields = [FieldResult(f"f{i}.jpg", 640, 480, cells=[object()], scale_unsure=i == 3) for i in range(5)]
    text = [w for w in count_warnings(fields) if "unsure of the scale" in w]
    assert text and "1 of 5 fields (f3.jpg)" in text[0]


def test_count_reports_what_the_finder_rejected_apart(counted):
    code, out = counted
    summary = json.loads((out / "count.json").read_text())
    assert summary["finder"] == "shipped"
    assert isinstance(summary["rejected"], int) and summary["rejected"] >= 0
    assert "judged not white cells" in (out / "count.html").read_text()
