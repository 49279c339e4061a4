"""Draw docs/stain.jpg: the reference nucleus stain (--stain nucleus) on cells from three labs.

    python scripts/stain_figure.py [--data ../shared/datasets] [--out docs/stain.jpg] [--seed 0]

For each lab (Raabin-WBC, PBC, BCCD) one cell of each class drawn at random (--seed), as the
model sees it with `--crop cell` (112 px), above the same crop redrawn by
wbcnet.cells.stain.normalize_stain.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from wbcnet.cells.preprocess import Preprocess, load_input
from wbcnet.cells.stain import normalize_stain
from wbcnet.render.tiles import image_grid

REPO = Path(__file__).resolve().parent.parent
LABS = [("raabin-wbc-train", "Raabin-WBC"), ("pbc-5class", "PBC"), ("bccd-wbc-crops", "BCCD")]
CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "stain.jpg")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    prep = Preprocess(size=112, crop="cell")
    grid, labels = [], []
    for folder, name in LABS:
        crops = [load_input(rng.choice(sorted((args.data / folder / cls).glob("*.jpg"))), prep)[0] for cls in CLASSES]
        grid += [crops, [normalize_stain(crop) for crop in crops]]
        labels += [f"{name}\nas stained", f"{name}\nreference stain"]
    image_grid(grid, args.out, "--stain nucleus: each cell crop redrawn with Raabin-WBC's nucleus colour and density",
               CLASSES, labels, tile_in=(2, 2.1), sizes=(10, 9, 11), dpi=72)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
