"""Draw docs/locate.png: "find the cell, then crop to it" on cells from three labs, side by side.

    python scripts/locate_figure.py [--data ../shared/datasets] [--out docs/locate.png] [--seed 0]

Reads ../shared/datasets (raabin-wbc-train, pbc-5class, bccd-wbc-crops; not shipped with the
package). For each lab, one cell of each class drawn at random (--seed): on the left the picture
as the lab framed it, at one display size, with the circle wbcnet.cells.locate.find_cell found and
the square crop_square cuts at the default context; on the right that square resized to the
model's 112 px. The last row is a Raabin-WBC, PBC and BCCD neutrophil shifted into a corner of
a black frame, as labs pad a cell that sat near the edge of the field.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wbcnet.cells.locate import DEFAULT_CONTEXT, crop_square
from wbcnet.cells.classic import find_cell
from wbcnet.render.plots import pyplot

REPO = Path(__file__).resolve().parent.parent
LABS = [("raabin-wbc-train", "Raabin-WBC (575 px, here 224)"), ("pbc-5class", "PBC (360 px, here 224)"),
        ("bccd-wbc-crops", "BCCD (130-340 px)")]
CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
SHOW = 224     # display size of the "before" panels
MODEL = 112    # what the model sees


def pad_black(rgb: np.ndarray) -> np.ndarray:
    """The picture shifted a quarter towards a corner, black where the field ended."""
    shift = rgb.shape[0] // 4
    out = np.zeros_like(rgb)
    out[shift:, shift:] = rgb[:-shift, :-shift]
    return out


def before_after(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    box = find_cell(rgb)
    scale = SHOW / max(rgb.shape[:2])
    shown = Image.fromarray(rgb).resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                                        Image.Resampling.LANCZOS)
    if box is None:
        return np.asarray(shown), np.full((MODEL, MODEL, 3), 255, np.uint8)
    draw = ImageDraw.Draw(shown)
    cx, cy, r = box.cx * scale, box.cy * scale, box.radius * scale
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(0, 190, 0), width=2)
    half = r * DEFAULT_CONTEXT
    draw.rectangle([cx - half, cy - half, cx + half, cy + half], outline=(30, 110, 255), width=2)
    crop = Image.fromarray(crop_square(rgb, box)).resize((MODEL, MODEL), Image.Resampling.LANCZOS)
    return np.asarray(shown), np.asarray(crop)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "locate.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    rows = CLASSES + ["Neutrophil,\nblack padding"]
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 2 * len(LABS), figsize=(2.2 * 2 * len(LABS), 2.3 * len(rows)),
                             gridspec_kw={"width_ratios": [2, 1] * len(LABS)})
    for j, (lab, title) in enumerate(LABS):
        picked = {}
        for i, cls in enumerate(CLASSES):
            files = sorted((args.data / lab / cls).glob("*.jpg"))
            picked[cls] = np.asarray(Image.open(rng.choice(files)).convert("RGB"))
        for i, row in enumerate(rows):
            rgb = picked[row] if row in picked else pad_black(picked["Neutrophil"])
            before, after = before_after(rgb)
            axes[i, 2 * j].imshow(before)
            axes[i, 2 * j + 1].imshow(after)
            if i == 0:
                axes[i, 2 * j].set_title(title, fontsize=10, loc="left")
                axes[i, 2 * j + 1].set_title(f"crop, {MODEL} px", fontsize=9)
            if j == 0:
                axes[i, 0].set_ylabel(row, fontsize=10)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"find_cell (green circle: the whole cell) and crop_square (blue: {DEFAULT_CONTEXT:g} x the "
                 f"cell's diameter, plasma-filled past the edge)", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    plt.close(fig)
    # A palette PNG: a quarter of the bytes, and the cells still read at this size.
    Image.open(args.out).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
