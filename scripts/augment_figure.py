"""Draw docs/augment.jpg: what each augmentation stage of the recipe does to real cells.

    python scripts/augment_figure.py [--data ../shared/datasets] [--out docs/augment.jpg] [--seed 0]

Columns: cells from Raabin-WBC, PBC and BCCD as the model sees them (`--crop cell`, 112 px). Rows:
the cells as they are, then each stage of configs/multilab.yaml's augmentation alone at its
recipe strength (on every image, so the row shows it), then the whole recipe as training draws it.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
import yaml

from wbcnet.data.augment import AugmentConfig, augment_batch
from wbcnet.cells.preprocess import Preprocess, load_input
from wbcnet.render.tiles import image_grid

REPO = Path(__file__).resolve().parent.parent
LABS = [("raabin-wbc-train", "Raabin"), ("pbc-5class", "PBC"), ("bccd-wbc-crops", "BCCD")]
CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
STILL = dict(rotation=0, shift=0, shear=0, zoom=0, hflip=False, vflip=False, rot90=False, brightness=0,
             contrast=0, saturation=0, hue=0, channel_gain=0)
# (row title, the stage's fields switched on for every image)
STAGES = [("defocus (disc)", {"defocus": 1.0}), ("Gaussian blur", {"blur": 1.0}),
          ("low-res camera + JPEG", {"downscale": "recipe", "jpeg": 1.0}), ("noise", {"noise": 1.0}),
          ("pale stain", {"pale": 1.0}), ("HED stain", {"hed": "recipe"}), ("tint", {"tint": 1.0}),
          ("colour temperature", {"temperature": 1.0}), ("gamma", {"gamma": 1.0}),
          ("uneven light", {"uneven_light": 1.0})]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "augment.jpg")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    recipe = yaml.safe_load((REPO / "configs" / "multilab.yaml").read_text())["augment"]
    rng = random.Random(args.seed)
    prep = Preprocess(size=112, crop="cell")
    picks = [(lab, cls) for lab in LABS for cls in ("Lymphocyte", "Neutrophil")] + [(LABS[0], "Eosinophil"),
                                                                                    (LABS[1], "Basophil")]
    cells, titles = [], []
    for (folder, name), cls in picks:
        path = rng.choice(sorted((args.data / folder / cls).glob("*.jpg")))
        cells.append(load_input(path, prep)[0])
        titles.append(f"{name} {cls[:4]}.")
    x = torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2).contiguous()
    still = {**recipe, **STILL}
    off = {k: (1.0 if k == "downscale" else 0.0) for k in ("blur", "defocus", "pale", "tint", "temperature", "gamma",
                                                          "uneven_light", "noise", "jpeg", "hed", "downscale")}
    rows = [("as found", AugmentConfig(**{**still, **off}))]
    for title, on in STAGES:
        fields = {k: (recipe[k] if v == "recipe" else v) for k, v in on.items()}
        rows.append((title, AugmentConfig(**{**still, **off, **fields})))
    rows.append(("the whole recipe", AugmentConfig(**recipe)))
    grid = []
    for i, (_, cfg) in enumerate(rows):
        y = augment_batch(x, cfg, torch.Generator().manual_seed(args.seed + i))
        grid.append([y[j].permute(1, 2, 0).numpy() for j in range(len(cells))])
    image_grid(grid, args.out, "Training augmentation (configs/multilab.yaml): each stage alone, then all together",
               titles, [title for title, _ in rows], tile_in=(1.3, 1.35), sizes=(7, 7, 9), dpi=80)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
