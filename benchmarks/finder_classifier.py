"""The shipped classifier with the threshold finder's crops and with the learned finder's, on the
shipped run's own test splits (docs/model_card/fast/split.csv) and on BCCD's crops, as they are and
made pale.

    python -m benchmarks.finder_classifier [--out runs/finder/classifier]

The classifier was trained on the threshold finder's crops; this says what changes when the
learned finder cuts them instead, without retraining. Each side is `wbcnet evaluate` with the
shipped checkpoint, once as shipped (its preprocessing names no finder: the learned one) and once
from a copy whose JSON says `"finder": "classic"`. "Pale" is the Raabin-WBC test split and BCCD's
crops with nucleus contrast x0.2 (the finder's stress "contrast x0.2", the contrast measured on a
held-back lab): a stand-in for that lab, written once under OUT/pale. Writes
OUT/finder_classifier.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "src" / "wbcnet" / "assets"
LABS = ("raabin", "pbc", "bccd", "pale-raabin", "pale-bccd")


def pale_copies(found, out: Path) -> Path:
    """Each picture of a scan() result written as out/<class>/<stem>.png with nucleus contrast x0.2."""
    from PIL import Image

    from wbcnet.core.imageio import load_rgb
    from wbcnet.evaluation.finder import stress

    for sample in found.samples:
        target = out / found.classes[sample.label] / (Path(sample.path).stem + ".png")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            pale, _ = stress(load_rgb(sample.path), "contrast x0.2", np.zeros((0, 4), np.float32))
            Image.fromarray(pale).save(target)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/finder/classifier"))
    ap.add_argument("--bccd", type=Path, default=REPO.parent / "shared" / "datasets" / "bccd-wbc-crops")
    args = ap.parse_args(argv)

    from wbcnet.data.scan import scan

    split = REPO / "docs" / "model_card" / "split.csv"
    pale_raabin = pale_copies(scan(split, split="test", source="raabin"), args.out / "pale" / "raabin")
    pale_bccd = pale_copies(scan(args.bccd), args.out / "pale" / "bccd")
    classic = args.out / "classic-checkpoint" / "model"
    classic.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASSETS / "fast.safetensors", classic.with_suffix(".safetensors"))
    meta = json.loads((ASSETS / "fast.json").read_text())
    meta["preprocess"] = {**meta.get("preprocess", {}), "finder": "classic"}
    classic.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    rows = {}
    for name, ckpt in (("threshold finder (classic)", str(classic.with_suffix(".safetensors"))),
                       ("learned finder", str(ASSETS / "fast.safetensors"))):
        out = args.out / ("classic" if "classic" in name else "learned")
        cmd = ["wbcnet", "evaluate", "--checkpoint", ckpt, "--data", f"raabin={split}", "--data", f"pbc={split}",
               "--data", f"bccd={args.bccd}", "--data", f"pale-raabin={pale_raabin}", "--data",
               f"pale-bccd={pale_bccd}", "--split", "test", "--out", str(out), "--overwrite",
               "--no-explain", "--no-progress", "--bootstrap", "1000"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        rows[name] = {lab: json.loads((out / lab / "metrics.json").read_text()) for lab in LABS}
    lines = ["| crops cut by | Raabin test acc / macro-F1 | PBC test acc / macro-F1 | BCCD acc / macro-F1 | "
             "Raabin test, pale | BCCD, pale | cell not found (" + " / ".join(LABS) + ") |",
             "|---|---|---|---|---|---|---|"]
    for name, by_lab in rows.items():
        cells = [f"{m['accuracy']:.4f} / {m['macro_f1']:.4f}" for m in by_lab.values()]
        missing = " / ".join(str(m.get("cell_not_found", "?")) for m in by_lab.values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {missing} |")
    (args.out / "finder_classifier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
