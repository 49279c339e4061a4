"""Stand-ins for labs we don't have: degraded copies of a lab's pictures, for measuring only.

    python -m benchmarks.standins --data ../shared/datasets/pbc-5class --out runs/standins/pbc --n 1000

Each copy is made from the original picture (before wbcnet finds and crops the cell) with PIL and
scipy, never with the training augmentation (data/augment.py, torch/kornia), and with settings
of its own, so a model is not scored on the very transformations it was trained with:

- `blur + pale`: a soft, pale, grey-violet lab (like the held-back blurred lab): Gaussian blur of
  sigma 2.5% of the picture's short side (15 px on a 575 px Raabin-WBC picture, the issue's
  pilot), every pixel pulled towards the picture's background so that a quarter of the contrast
  is left, and a grey-violet cast;
- `yellow cast`: a yellow background with high contrast and a tight crop to 120 px (like the
  held-back yellow lab): the middle 70% of the picture, PIL contrast x1.4, blue x0.72 and green
  x0.93, shrunk to 120 px;
- `low-res camera`: shrunk to a third, saved as JPEG quality 35, vignetted by 35% towards the
  corners.

The same cells (a seeded, class-stratified draw of `--n`) are copied for every kind and kept
clean too, so each kind's figure stands beside the clean figure of the very same cells.
"""
from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from scipy import ndimage

KINDS = ("clean", "blur + pale", "yellow cast", "low-res camera")


def slug(kind: str) -> str:
    return kind.replace(" + ", "-").replace(" ", "-")


def background(a: np.ndarray) -> np.ndarray:
    """The picture's background colour: the median of its brightest tenth."""
    lum = a.mean(axis=2)
    return np.median(a[lum >= np.quantile(lum, 0.9)], axis=0)


def blur_pale(img: Image.Image) -> Image.Image:
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    sigma = 0.025 * min(a.shape[:2])
    a = ndimage.gaussian_filter(a, sigma=(sigma, sigma, 0), mode="nearest")
    bg = background(a)
    a = bg + (a - bg) * 0.25
    a = a * np.array([0.93, 0.90, 0.98], dtype=np.float32) + np.array([6, 4, 10], dtype=np.float32)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def yellow_cast(img: Image.Image) -> Image.Image:
    img = img.convert("RGB")
    w, h = img.size
    m = 0.15
    img = img.crop((round(w * m), round(h * m), round(w * (1 - m)), round(h * (1 - m))))
    img = ImageEnhance.Contrast(img).enhance(1.4)
    a = np.asarray(img, dtype=np.float32) * np.array([1.0, 0.93, 0.72], dtype=np.float32)
    img = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    scale = 120 / max(img.size)
    return img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.LANCZOS)


def low_res_camera(img: Image.Image) -> Image.Image:
    img = img.convert("RGB")
    w, h = img.size
    small = img.resize((max(8, w // 3), max(8, h // 3)), Image.BOX)
    a = np.asarray(small, dtype=np.float32)
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    r = np.hypot((yy - a.shape[0] / 2) / (a.shape[0] / 2), (xx - a.shape[1] / 2) / (a.shape[1] / 2)) / np.sqrt(2)
    a = a * (1 - 0.35 * r ** 2)[..., None]
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8)).save(buf, "JPEG", quality=35)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


MAKERS = {"blur + pale": blur_pale, "yellow cast": yellow_cast, "low-res camera": low_res_camera}


def draw(data: Path, n: int, seed: int) -> list[tuple[str, Path]]:
    """(class, path) of up to n pictures, the same share of each class as the lab has (at least 10
    of a class where it has them), seeded."""
    by_class = {d.name: sorted(p for p in d.iterdir() if p.is_file()) for d in sorted(data.iterdir()) if d.is_dir()}
    total = sum(len(v) for v in by_class.values())
    rng = random.Random(seed)
    out = []
    for c, files in by_class.items():
        k = min(len(files), max(10, round(n * len(files) / total)))
        out += [(c, p) for p in rng.sample(files, k)]
    return out


def make(data: Path, out: Path, n: int = 1000, seed: int = 0, kinds=KINDS) -> dict[str, Path]:
    """Write out/SLUG/CLASS/NAME.png for each kind; a kind already complete is kept. Returns kind -> folder."""
    picks = draw(data, n, seed)
    folders = {}
    for kind in kinds:
        folder = out / slug(kind)
        folders[kind] = folder
        if (folder / "DONE").exists():
            continue
        for i, (c, p) in enumerate(picks):
            dst = folder / c / (p.stem + ".png")
            dst.parent.mkdir(parents=True, exist_ok=True)
            img = Image.open(p).convert("RGB")
            (img if kind == "clean" else MAKERS[kind](img)).save(dst)
            if (i + 1) % 250 == 0:
                print(f"  {kind}: {i + 1}/{len(picks)}", file=sys.stderr, flush=True)
        (folder / "DONE").write_text(f"{len(picks)} pictures from {data}, seed {seed}\n")
    return folders


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.standins", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a lab's class folders")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for kind, folder in make(a.data, a.out, a.n, a.seed).items():
        print(f"{kind}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
