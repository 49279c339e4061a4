"""Measure each lab's plasma colour and nucleus optical density: the table in cells/stain.py and
the reference (Raabin-WBC's row) that `--stain nucleus` redraws every picture in.

    python scripts/stain_reference.py [--data ../shared/datasets] [--n 200] [--seed 0]

For each lab, --n cells drawn at random, each cropped to the cell at 112 px as `--crop cell`
does; the medians over the cells of wbcnet.cells.stain.measure().
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from wbcnet.cells.preprocess import Preprocess, load_input
from wbcnet.cells.stain import measure

REPO = Path(__file__).resolve().parent.parent
LABS = [("raabin-wbc-train", "Raabin-WBC"), ("pbc-5class", "PBC"), ("bccd-wbc-crops", "BCCD")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    prep = Preprocess(size=112, crop="cell")
    print("lab          plasma RGB       nucleus OD           direction           size")
    for folder, name in LABS:
        paths = sorted((args.data / folder).glob("*/*.jpg"))
        random.Random(args.seed).shuffle(paths)
        parts = [measure(load_input(p, prep)[0]) for p in paths[:args.n]]
        plasma = np.median([p[0] for p in parts], axis=0)
        nucleus = np.median([p[2] for p in parts], axis=0)
        size = float(np.linalg.norm(nucleus))
        print(f"{name:12s} {np.array2string(plasma, precision=0):16s} {np.array2string(nucleus, precision=2):20s} "
              f"{np.array2string(nucleus / size, precision=2):20s}{size:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
