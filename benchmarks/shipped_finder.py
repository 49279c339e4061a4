"""Which finder should cut the shipped classifier's cells: the threshold finder it was trained on,
or the learned finder `wbcnet` gives it today (its model.json names no finder, and a missing
finder reads as the learned one since issue 18)?

    python -m benchmarks.shipped_finder --split runs/multilab-lf/split.csv \
        --bccd ../shared/datasets/bccd-wbc-crops --out runs/shipped-finder

The shipped weights under two model.json files that differ only in `preprocess.finder`, scored by
`wbcnet evaluate` on the Raabin-WBC test split and BCCD's crops as they are, and on the same
pictures made pale: nucleus contrast a fifth (the finder's stress "contrast x0.2", measured on a
held-back lab we cannot see). Nothing here is chosen on a lab we cannot see; the pale copies are a
stand-in, which is why the choice is reported, not made, by this script.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np

FINDERS = ("classic", "learned")


def pale_copies(paths: list[tuple[str, str]], out: Path) -> Path:
    """Each (picture, class) written as out/<class>/<stem>.png with nucleus contrast x0.2."""
    from PIL import Image

    from wbcnet.data.imageio import load_rgb
    from wbcnet.finder.evaluate import stress

    for path, label in paths:
        target = out / label / (Path(path).stem + ".png")
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        pale, _ = stress(load_rgb(path), "contrast x0.2", np.zeros((0, 4), np.float32))
        Image.fromarray(pale).save(target)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", required=True, help="a run's split.csv; its Raabin-WBC test rows are scored")
    ap.add_argument("--bccd", required=True, help="BCCD's labelled crops (an ImageFolder)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from wbcnet.checkpoint import SHIPPED
    from wbcnet.cli import main as wbcnet
    from wbcnet.data.scan import scan

    out = Path(args.out)
    raabin = scan(args.split, split="test", source="raabin")
    bccd = scan(args.bccd)
    rows = lambda found: [(s.path, found.classes[s.label]) for s in found.samples]  # noqa: E731
    pale_raabin = pale_copies(rows(raabin), out / "pale" / "raabin")
    pale_bccd = pale_copies(rows(bccd), out / "pale" / "bccd")

    table = ["| finder the shipped classifier is fed | Raabin-WBC test | BCCD | Raabin-WBC, pale | BCCD, pale |",
             "|---|---|---|---|---|"]
    for finder in FINDERS:
        ckpt = out / finder / "model.safetensors"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHIPPED.with_suffix(".safetensors"), ckpt)
        meta = json.loads(SHIPPED.with_suffix(".json").read_text())
        meta["preprocess"]["finder"] = finder
        ckpt.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        ev = out / "eval" / finder
        assert wbcnet(["evaluate", "--checkpoint", str(ckpt), "--no-explain", "--no-progress", "--overwrite",
                       "--data", f"raabin={args.split}", "--split", "test", "--data", f"bccd={args.bccd}",
                       "--data", f"pale-raabin={pale_raabin}", "--data", f"pale-bccd={pale_bccd}",
                       "--out", str(ev)]) == 0
        with open(ev / "summary.csv", newline="") as fh:
            summary = {r["set"]: r for r in csv.DictReader(fh)}
        table.append(f"| {finder} | " + " | ".join(
            f"{float(summary[s]['accuracy']):.4f} / {float(summary[s]['macro_f1']):.4f}"
            for s in ("raabin", "bccd", "pale-raabin", "pale-bccd")) + " |")
        print(table[-1], flush=True)
    (out / "shipped_finder.md").write_text("accuracy / macro-F1; `python -m benchmarks.shipped_finder`\n\n"
                                           + "\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
