import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wbcnet.core import imageio
from wbcnet.core.imageio import ImageReadError, image_info, load_rgb
from wbcnet.data.scan import scan
from wbcnet.core.errors import WbcnetError

from conftest import sample_paths, write_bad_files


def test_every_awkward_file_loads_or_fails_with_its_reason(tmp_path):
    kinds = write_bad_files(tmp_path)
    for name, kind in kinds.items():
        path = tmp_path / name
        if kind == "good":
            arr = load_rgb(path, 64)
            assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8, name
            assert arr.std() > 5, f"{name} decoded to a flat image"
        elif kind == "bad":
            with pytest.raises(ImageReadError) as err:
                load_rgb(path, 64)
            assert str(path) in str(err.value) and err.value.reason


def test_bad_file_reasons_are_specific(tmp_path):
    write_bad_files(tmp_path)
    reasons = {}
    for name in ("empty.jpg", "text.png", "truncated.jpg"):
        with pytest.raises(ImageReadError) as err:
            load_rgb(tmp_path / name, 64)
        reasons[name] = err.value.reason
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["text.png"]
    assert "truncated" in reasons["truncated.jpg"]


def test_exif_rotation_is_applied(tmp_path):
    write_bad_files(tmp_path)
    raw = Image.open(tmp_path / "exif_rotated.jpg")
    assert raw.size == (150, 224)
    assert load_rgb(tmp_path / "exif_rotated.jpg").shape == (150, 224, 3)  # turned: width 224, height 150


def test_rgba_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert load_rgb(tmp_path / "clear.png").min() == 255


def test_sixteen_bit_keeps_its_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    arr = load_rgb(tmp_path / "ramp.png")
    assert arr.min() == 0 and arr.max() == 255


def test_huge_image_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(imageio, "MAX_PIXELS", 100 * 100)
    Image.new("RGB", (200, 200)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="too large"):
        load_rgb(tmp_path / "big.png", 64)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims width x height RGB pixels: what a
    decompression bomb or a corrupt header hands the decoder."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


# Run in a fresh interpreter whose address space is capped a little above what it uses after the
# imports, so that allocating the claimed 1.2 GB would fail with MemoryError instead of passing.
REFUSE_UNDER_MEMORY_CAP = """
import resource, sys
from wbcnet.core.imageio import ImageReadError, image_info, load_rgb
used = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize:"))) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + 256 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    load_rgb(sys.argv[1], 64)
except ImageReadError as e:
    print("refused:", e.reason)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc to cap the address space")
def test_a_real_20000_px_header_is_refused_without_allocating_it(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(20_000, 20_000))
    assert path.stat().st_size < 100
    proc = subprocess.run([sys.executable, "-c", REFUSE_UNDER_MEMORY_CAP, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "refused: image too large" in proc.stdout, proc.stdout + proc.stderr
    with pytest.raises(ImageReadError, match="too large") as err:
        load_rgb(path, 64)
    assert str(path) in str(err.value)


def test_image_info_reads_the_header_as_stored(tmp_path):
    write_bad_files(tmp_path)
    assert image_info(tmp_path / "exif_rotated.jpg") == (150, 224, "RGB", "JPEG")  # not turned
    assert image_info(tmp_path / "sixteen.png")[2:] == ("I;16", "PNG")
    (tmp_path / "bomb.png").write_bytes(png_claiming(20_000, 20_000))
    for name, reason in (("empty.jpg", "empty"), ("text.png", "not an image"), ("bomb.png", "too large")):
        with pytest.raises(ImageReadError, match=reason):
            image_info(tmp_path / name)


def test_resize_is_square_and_draft_decoding_stays_close(tmp_path):
    src = sample_paths(1)[0]
    big = Image.open(src).resize((575, 575), Image.Resampling.LANCZOS)
    big.save(tmp_path / "big.jpg", quality=95)
    a = load_rgb(src, 112).astype(float)
    b = load_rgb(tmp_path / "big.jpg", 112).astype(float)
    assert np.abs(a - b).mean() < 4.0  # same cell, whatever size it arrives at


def test_scan_reports_hidden_and_non_image_files_and_matches_case(tmp_path):
    root = tmp_path / "data"
    for folder in ("neutrophil", "LYMPHOCYTE"):
        write_bad_files(root / folder)
    (root / "neutrophil" / "notes.txt").write_text("hi")
    result = scan(root, classes=["Lymphocyte", "Neutrophil", "Monocyte"])
    assert result.missing_classes == ["Monocyte"]
    assert {s.label for s in result.samples} == {0, 1}
    skipped = {p.split("/")[-1]: r for p, r in result.skipped}
    assert "hidden" in skipped[".DS_Store"] and "not an image" in skipped["notes.txt"]


def test_scan_rejects_a_folder_without_classes(tmp_path):
    with pytest.raises(WbcnetError, match="no class folders"):
        scan(tmp_path)
