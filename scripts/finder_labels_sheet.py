"""Draw docs/finder/labels.jpg: a seeded sample of the single-cell training labels (the threshold
finder's circles where it is sure), to check them by eye, as issue 18 asks.

    python scripts/finder_labels_sheet.py --data raabin=../shared/datasets/raabin-wbc-train --data pbc=../shared/datasets/pbc-5class
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wbcnet.data.fields import load_cell_pictures

REPO = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", action="append", required=True, metavar="LAB=DIR")
    ap.add_argument("--per-lab", type=int, default=4000, help="as in `wbcnet finder train` (same cache)")
    ap.add_argument("--show", type=int, default=24, help="pictures per lab on the sheet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "finder" / "labels.jpg")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    tiles = []
    for item in args.data:
        lab, path = item.split("=", 1)
        src = load_cell_pictures(path, lab, args.per_lab, 0, ".cache/wbcnet/finder", progress=False)
        for i in rng.choice(len(src), args.show, replace=False):
            img = Image.fromarray(src.images[i]).resize((160, 160))
            d = ImageDraw.Draw(img)
            k = 160 / src.images[i].shape[0]
            for (cx, cy, r), colour in [*((c, (0, 200, 0)) for c in src.cells[i]), *((c, (255, 160, 0)) for c in src.ignore[i])]:
                d.ellipse([(cx - r) * k, (cy - r) * k, (cx + r) * k, (cy + r) * k], outline=colour, width=2)
            d.text((4, 4), lab, fill=(0, 0, 0))
            tiles.append(img)
    cols = 12
    sheet = Image.new("RGB", (cols * 160, -(-len(tiles) // cols) * 160), "white")
    for j, t in enumerate(tiles):
        sheet.paste(t, ((j % cols) * 160, (j // cols) * 160))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=85)
    print(args.out)


if __name__ == "__main__":
    main()
