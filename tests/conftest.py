import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "src" / "wbcnet" / "assets" / "sample"
SHARED = REPO.parent / "shared" / "datasets"
RAABIN = SHARED / "raabin-wbc-train"
BCCD = SHARED / "bccd-wbc-crops"

needs_shared = pytest.mark.skipif(not RAABIN.is_dir(), reason="../shared/datasets is not here")


def sample_paths(per_class: int = 2) -> list[Path]:
    out = []
    for d in sorted(SAMPLE.iterdir()):
        if d.is_dir():
            out.extend(sorted(d.glob("*.jpg"))[:per_class])
    return out


def write_bad_files(folder: Path) -> dict[str, str]:
    """Every kind of awkward file a user's folder holds. Returns {name: kind}: 'bad' files must be
    reported, 'good' ones must load."""
    folder.mkdir(parents=True, exist_ok=True)
    good = np.asarray(Image.open(sample_paths(1)[0]).convert("RGB"))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("this is not a picture\n")
    buf = io.BytesIO()
    Image.fromarray(good).save(buf, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    sixteen = (good.mean(2).astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(folder / "sixteen.png")  # mode I;16
    Image.fromarray(good).convert("CMYK").save(folder / "cmyk.jpg", "JPEG")
    rgba = np.dstack([good, np.full(good.shape[:2], 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(good).convert("L").save(folder / "gray.png")
    Image.fromarray(good).convert("P").save(folder / "palette.gif")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 100)
    img = Image.fromarray(good[:, :150])  # non-square
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(folder / "exif_rotated.jpg", exif=exif.tobytes())
    return {"empty.jpg": "bad", "text.png": "bad", "truncated.jpg": "bad", "sixteen.png": "good", "cmyk.jpg": "good",
            "rgba.png": "good", "gray.png": "good", "palette.gif": "good", "exif_rotated.jpg": "good",
            ".DS_Store": "hidden"}


@pytest.fixture
def tiny_imagefolder(tmp_path):
    """A copy of 8 real cells per class from the bundled sample."""
    root = tmp_path / "data"
    for d in sorted(SAMPLE.iterdir()):
        if d.is_dir():
            (root / d.name).mkdir(parents=True)
            for p in sorted(d.glob("*.jpg"))[:8]:
                shutil.copy(p, root / d.name / p.name)
    return root


def small_config(data, out, **kw):
    """A run of a few seconds: a tiny mhcnn at 48 px."""
    from wbcnet.training.config import TrainConfig

    base = dict(data=data if isinstance(data, dict) else str(data), out=str(out), model="mhcnn", img_size=48, epochs=3, batch_size=8, lr=2e-3,
                warmup_epochs=1, patience=0, val_frac=0.25, test_frac=0.25, seed=7, cache_dir=None, progress=False,
                ema_decay=0.9, model_args={"widths": [8, 16, 32, 48], "heads": 2, "depth": 1})
    base.update(kw)
    return TrainConfig(**base)


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: to check that a failed command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be written in: a read-only tmpfs as root (where chmod means nothing),
    else a folder without write permission."""
    import os
    import subprocess

    d = tmp_path / "readonly"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("running as root and cannot mount a read-only tmpfs")
    yield d
    subprocess.run(["umount", str(d)], capture_output=True)


def pbc_like_copy(src, dest, per_class=None, transform=None):
    """Sample cells renamed the way PBC names them (CLASS_NUMBER.jpg): the Raabin grouping rule
    makes one group per class of them."""
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        (dest / d.name).mkdir(parents=True)
        for k, p in enumerate(sorted(d.glob("*.jpg"))[:per_class]):
            img = Image.open(p).convert("RGB")
            (transform(img) if transform else img).save(dest / d.name / f"{d.name[:2].upper()}_{1000 + k}.jpg",
                                                        quality=92)


def shifted(img: Image.Image) -> Image.Image:
    """Another 'lab': red and blue swapped (another stain), cells at 60% of the size (another
    magnification) and half the resolution (another camera)."""
    r, g, b = img.split()
    w, h = img.size
    small = Image.merge("RGB", (b, g, r)).resize((w * 3 // 10, h * 3 // 10), Image.Resampling.BILINEAR)
    small = small.resize((w * 6 // 10, h * 6 // 10), Image.Resampling.BILINEAR)
    arr = np.asarray(small)
    pad = ((h - arr.shape[0]) // 2, (w - arr.shape[1]) // 2)
    arr = np.pad(arr, ((pad[0], h - arr.shape[0] - pad[0]), (pad[1], w - arr.shape[1] - pad[1]), (0, 0)), mode="edge")
    return Image.fromarray(arr)


@pytest.fixture(scope="session")
def two_lab_run(tmp_path_factory):
    """A small model trained on the sample and a renamed copy of it: two 'labs' (test_multilab,
    test_adapt_lab). Session-wide: it takes half a minute to train."""
    from wbcnet.training.classifier import fit

    root = tmp_path_factory.mktemp("labs")
    shutil.copytree(SAMPLE, root / "raabin", ignore=shutil.ignore_patterns("*.md"))
    pbc_like_copy(SAMPLE, root / "other", per_class=12)
    # No per-image colour standardisation and no cell crop: this small model sees colour and scale,
    # so a change of stain and magnification is a shift for it.
    cfg = small_config({"raabin": str(root / "raabin"), "other": str(root / "other")}, root / "run",
                       epochs=4, img_size=64, batch_size=16, merge_near_duplicates=False,
                       model_args={"widths": [8, 16, 32, 48], "heads": 2, "depth": 1, "image_norm": False})
    return root, fit(cfg)
