"""`wbcnet.data.audit`: duplicates (exact, rotated, mirrored, rescaled), unreadable files, colour shortcuts.

Most checks share one audit of a "messy" folder: the 300 bundled real cells (all different, so no
pair among them is a duplicate), transformed copies of some of them, one byte-identical copy,
and broken files.
"""
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wbcnet.data.audit import run_audit
from wbcnet.render.audit import format_table, write_audit

from conftest import RAABIN, SAMPLE, needs_shared


def rotate_edge(arr: np.ndarray, degrees: float) -> np.ndarray:
    """Turn an image about its centre by any angle, filling the corners with the nearest edge pixel
    (like scipy.ndimage.rotate(mode='nearest')), bilinear."""
    h, w = arr.shape[:2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = np.radians(degrees)
    sy = np.clip(cy + (yy - cy) * np.cos(t) - (xx - cx) * np.sin(t), 0, h - 1)
    sx = np.clip(cx + (yy - cy) * np.sin(t) + (xx - cx) * np.cos(t), 0, w - 1)
    y0, x0 = np.minimum(sy.astype(int), h - 2), np.minimum(sx.astype(int), w - 2)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    a = arr.astype(np.float64)
    out = (a[y0, x0] * (1 - fy) * (1 - fx) + a[y0 + 1, x0] * fy * (1 - fx) + a[y0, x0 + 1] * (1 - fy) * fx
           + a[y0 + 1, x0 + 1] * fy * fx)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def zoom(arr: np.ndarray, factor: float) -> np.ndarray:
    """Magnify about the centre by `factor` (> 1), keeping the size."""
    h = arr.shape[0]
    m = int(round(h * (1 - 1 / factor) / 2))
    return np.asarray(Image.fromarray(arr[m:h - m, m:h - m]).resize((h, h), Image.Resampling.BICUBIC))


def jpeg_bytes(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


TRANSFORMS = {
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "mirror_lr": lambda a: a[:, ::-1],
    "mirror_ud": lambda a: a[::-1],
    "rot30": lambda a: rotate_edge(a, 30),
    "rot-30": lambda a: rotate_edge(a, -30),
    "rot17_mirror": lambda a: rotate_edge(a[:, ::-1], 17),
    "rot133": lambda a: rotate_edge(a, 133),
    "half_size": lambda a: np.asarray(Image.fromarray(a).resize((112, 112), Image.Resampling.BILINEAR)),
    "zoom1.08_rot60": lambda a: zoom(rotate_edge(a, 60), 1.08),
    "jpeg40": lambda a: a,  # saved at quality 40 below
}


def make_copies(folder: Path, per_class: int) -> list[tuple[str, str]]:
    """Write transformed copies of the first `per_class` images of each class folder next to them;
    return the (original, copy) pairs."""
    pairs = []
    names = list(TRANSFORMS)
    k = 0
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for original in sorted(class_dir.glob("*.jpg"))[:per_class]:
            name = names[k % len(names)]
            k += 1
            arr = TRANSFORMS[name](np.asarray(Image.open(original).convert("RGB")))
            copy = class_dir / f"copy-{name}-{original.name}"
            copy.write_bytes(jpeg_bytes(arr, 40 if name == "jpeg40" else 92))
            pairs.append((str(original), str(copy)))
    return pairs


def pair_set(pairs) -> set:
    return {frozenset((a, b)) for a, b in pairs}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit") / "data"
    shutil.copytree(SAMPLE, root, ignore=shutil.ignore_patterns("*.md"))
    copies = make_copies(root, per_class=6)
    neutrophils = sorted((root / "Neutrophil").glob("9*.jpg"))
    exact = root / "Neutrophil" / "same-bytes.jpg"
    shutil.copy(neutrophils[-1], exact)
    (root / "Monocyte" / "empty.jpg").write_bytes(b"")
    (root / "Monocyte" / "text.png").write_text("this is not a picture\n")
    (root / "Monocyte" / "notes.txt").write_text("not an image\n")
    result = run_audit(root, progress=False)
    return {"root": root, "result": result, "copies": copies, "exact": (str(neutrophils[-1]), str(exact))}


def test_every_rotated_mirrored_or_rescaled_copy_pairs_with_its_original_and_nothing_else(messy):
    result = messy["result"]
    found = pair_set((p["a"], p["b"]) for p in result["near_duplicates"])
    expected = pair_set(messy["copies"])
    assert len(expected) == 30
    missed = expected - found
    false_pairs = found - expected
    assert not missed, f"copies not found: {sorted(map(sorted, missed))}"
    assert not false_pairs, f"false pairs: {sorted(map(sorted, false_pairs))}"
    scores = {frozenset((p["a"], p["b"])): p["score"] for p in result["near_duplicates"]}
    assert min(scores.values()) > 0.9  # well above the threshold, not scraping past it


def test_exact_duplicates_are_found_and_not_repeated_as_near_duplicates(messy):
    groups = messy["result"]["exact_duplicates"]
    assert [sorted(g["paths"]) for g in groups] == [sorted(messy["exact"])]
    assert frozenset(messy["exact"]) not in pair_set((p["a"], p["b"]) for p in messy["result"]["near_duplicates"])


def test_broken_files_are_reported_with_a_reason_and_skipped_files_listed(messy):
    result = messy["result"]
    reasons = {Path(u["path"]).name: u["reason"] for u in result["unreadable"]}
    assert set(reasons) == {"empty.jpg", "text.png"}
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["text.png"]
    assert [Path(s["path"]).name for s in result["skipped"]] == ["notes.txt"]
    assert result["n_images"] == 300 + 30 + 1
    assert result["class_counts"]["Monocyte"] == 66  # unreadable files are not counted


def test_counts_sizes_and_modes(messy):
    result = messy["result"]
    assert result["class_counts"]["Neutrophil"] == 60 + 6 + 1
    assert result["imbalance_ratio"] == pytest.approx(67 / 66)
    sizes = {(s["width"], s["height"]): s["count"] for s in result["sizes"]}
    half_size = sum("copy-half_size-" in copy for _, copy in messy["copies"])
    assert half_size >= 2 and sizes[(112, 112)] == half_size and sum(sizes.values()) == 331
    assert result["modes"] == {"RGB": 331}


def test_report_files_are_self_contained(messy, tmp_path):
    json_path, html_path = write_audit(messy["result"], tmp_path / "out")
    assert json.loads(json_path.read_text())["n_images"] == 331
    page = html_path.read_text(encoding="utf-8")
    assert page.count('<img class="thumb" src="data:image/jpeg;base64,') == 2 * 30  # pair thumbnails embedded
    # Self-contained: no address outside the file, no script; the one <link> is the empty inline icon.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    assert re.findall(r"<link[^>]*>", page) == ['<link rel="icon" href="data:,">']
    table = format_table(messy["result"])
    assert "near-duplicates within the set: 30 pair(s)" in table
    assert "text.png" in table


def test_against_finds_the_copies_shared_by_two_sets(tmp_path):
    train, test = tmp_path / "train", tmp_path / "test"
    expected = []
    for class_dir in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.jpg"))
        (train / class_dir.name).mkdir(parents=True)
        (test / class_dir.name).mkdir(parents=True)
        for f in files[:8]:
            shutil.copy(f, train / class_dir.name / f.name)
        for f in files[8:14]:  # different cells, no pair with train
            shutil.copy(f, test / class_dir.name / f.name)
        original = files[0]
        turned = rotate_edge(np.asarray(Image.open(original).convert("RGB"))[::-1], 41)
        (test / class_dir.name / "turned.jpg").write_bytes(jpeg_bytes(turned, 90))
        shutil.copy(files[1], test / class_dir.name / "same.jpg")
        expected.append((str(train / class_dir.name / original.name), str(test / class_dir.name / "turned.jpg")))
    result = run_audit(train, against=test, progress=False)
    across = result["against"]
    assert pair_set((p["a"], p["b"]) for p in across["near_duplicates"]) == pair_set(expected)
    assert len(across["exact_duplicates"]) == 5
    assert result["near_duplicates"] == [] and result["exact_duplicates"] == []
    assert any("leak" in w for w in result["warnings"])


def test_a_class_tinted_red_is_flagged_as_a_colour_shortcut_and_the_others_are_not(tmp_path):
    root = tmp_path / "tinted"
    for class_dir in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for f in sorted(class_dir.glob("*.jpg"))[:30]:
            arr = np.asarray(Image.open(f).convert("RGB")).astype(np.int16)
            if class_dir.name == "Lymphocyte":
                arr = arr + np.array([18, -6, -6])
            (root / class_dir.name / f.name).write_bytes(jpeg_bytes(np.clip(arr, 0, 255).astype(np.uint8), 90))
    result = run_audit(root, progress=False)
    shortcut = result["colour"]["shortcut"]
    assert "Lymphocyte" in shortcut["flagged"]
    assert shortcut["classes"]["Lymphocyte"]["auc"] >= 0.9
    assert shortcut["classes"]["Lymphocyte"]["background_effect_rgb"][0] > 1  # redder
    assert any("colour shortcut: Lymphocyte" in w for w in result["warnings"])
    # In the bundled sample the basophils come from another session with a different background:
    # only those may be flagged besides the tinted class.
    assert set(shortcut["flagged"]) <= {"Lymphocyte", "Basophil"}
    per_class = result["colour"]["per_class"]["Lymphocyte"]
    assert per_class["mean_rgb"][0] > result["colour"]["per_class"]["Neutrophil"]["mean_rgb"][0]
    assert "AUC" in result["colour"]["shortcut"]["criterion"]


@needs_shared
@pytest.mark.shared
def test_raabin_basophils_are_flagged_by_colour_and_only_they(tmp_path):
    """A manifest of all Raabin basophils and 120 cells of each other class keeps this fast."""
    manifest = tmp_path / "subset.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for class_dir in sorted(p for p in RAABIN.iterdir() if p.is_dir()):
            files = sorted(class_dir.glob("*.jpg"))
            for f in (files if class_dir.name == "Basophil" else files[::max(1, len(files) // 120)][:120]):
                writer.writerow([str(f), class_dir.name])
    result = run_audit(manifest, progress=False)
    assert result["colour"]["shortcut"]["flagged"] == ["Basophil"]
    assert result["colour"]["shortcut"]["classes"]["Basophil"]["auc"] > 0.95


def test_the_near_duplicate_engine_stands_alone():
    """Training imports it: it must not pull in the audit, the report, scikit-learn or matplotlib."""
    code = ("import sys, wbcnet.data.near_duplicates; "
            "print(sorted(m for m in ('wbcnet.data.audit', 'wbcnet.report', 'wbcnet.render.html', 'sklearn', 'matplotlib') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
