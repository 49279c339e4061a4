"""Write the model inputs of labelled image folders as small WebP files, for training elsewhere.

    python scripts/pack_crops.py --data raabin=../shared/datasets/raabin-wbc-train \\
        --data pbc=../shared/datasets/pbc-5class --data bccd=../shared/datasets/bccd-wbc-crops \\
        --out .packed --size 112 --crop cell --quality 85

Each image goes through the same preprocessing as training (cells/preprocess.py: find the cell,
crop `context` cell diameters around it, resize to `size`) and is saved as OUT/NAME/CLASS/STEM.webp,
file names kept so field-of-view grouping still works. `--rows RUN/split.csv --splits train,val`
packs only those rows of a run's split (what a device needs to train; the test split stays here).
OUT/pack.json says how the crops were made (`benchmarks/levers.py adopt` gives it to the models
trained on them). 20,800 cells at 112 px take about 45 MB,
small enough to send to a GPU machine with the code; train there with `--crop none` (the files
are crops already) and `--img-size` equal to `--size`. WebP quality 85 is lossy: about as much
as a camera JPEG's loss, noted wherever results come from such a copy.
"""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
import csv
import json
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from wbcnet.cells.preprocess import Preprocess, load_input
from wbcnet.data.scan import scan
from wbcnet.data.sources import parse_sources


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--crop", choices=["none", "cell"], default="cell")
    p.add_argument("--context", type=float, default=1.5)
    p.add_argument("--quality", type=int, default=85)
    p.add_argument("--rows", help="a run's split.csv: pack only its rows of --splits")
    p.add_argument("--splits", default="train,val", help="with --rows: which splits (default train,val)")
    args = p.parse_args(argv)
    prep = Preprocess(args.size, args.crop, args.context)
    keep = None
    if args.rows:
        with open(args.rows, newline="") as fh:
            keep = {(r["source"], Path(r["path"]).name) for r in csv.DictReader(fh) if r["split"] in args.splits.split(",")}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "pack.json").write_text(json.dumps({"size": args.size, "format": "webp", "quality": args.quality,
                                                          "preprocess": prep.to_dict()}, indent=1))
    for src in parse_sources(args.data):
        found = scan(src.path)
        jobs = [(s.path, Path(args.out) / src.name / found.classes[s.label] / (Path(s.path).stem + ".webp"))
                for s in found.samples if keep is None or (src.name, Path(s.path).name) in keep]

        def one(job):
            path, dest = job
            arr, cell = load_input(path, prep)
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(dest, "WEBP", quality=args.quality)
            return cell

        with ThreadPoolExecutor(4) as pool:
            cells = list(tqdm(pool.map(one, jobs), total=len(jobs), desc=src.name))
        print(f"{src.name}: {len(jobs)} images, cell found in {sum(cells)}")


if __name__ == "__main__":
    main()
