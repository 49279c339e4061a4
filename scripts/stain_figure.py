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
from wbcnet.render.plots import pyplot

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
    plt = pyplot()
    fig, axes = plt.subplots(2 * len(LABS), len(CLASSES), figsize=(2 * len(CLASSES), 2.1 * 2 * len(LABS)))
    for i, (folder, name) in enumerate(LABS):
        for j, cls in enumerate(CLASSES):
            path = rng.choice(sorted((args.data / folder / cls).glob("*.jpg")))
            crop = load_input(path, prep)[0]
            for k, (img, what) in enumerate([(crop, "as stained"), (normalize_stain(crop), "reference stain")]):
                ax = axes[2 * i + k, j]
                ax.imshow(img)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and k == 0:
                    ax.set_title(cls, fontsize=10)
                if j == 0:
                    ax.set_ylabel(f"{name}\n{what}", fontsize=9)
    fig.suptitle("--stain nucleus: each cell crop redrawn with Raabin-WBC's nucleus colour and density", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=72, pil_kwargs={"quality": 85})
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
