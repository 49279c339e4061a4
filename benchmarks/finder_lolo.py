"""The learned cell finder, leave-one-lab-out: the README's finder table in one command.

    python -m benchmarks.finder_lolo --data ../shared/datasets --out runs/finder [--steps 1500]

Trains four finders with `wbcnet finder train` (skipping any already in OUT): on all three labs
(the shipped one, 1,500 steps), and on all but BCCD, all but PBC, all but Raabin-WBC (1,000 steps
each, for this CPU's time: their figures are if anything low). Then scores each, and the
threshold finder, with `wbcnet finder evaluate` on BCCD's fields, their stress set (degraded to
each extreme of issue 18) and 1,000 single-cell pictures per lab (seed 1; the training draw is
4,000 per lab at seed 0, so a lab's pictures may overlap its own training draw: those figures are
"seen", and only the left-out finder's figure counts). Writes OUT/eval/finder_eval.{json,md} and
OUT/finder_table.md, whose second table gives, for each lab, the figure of the finder that never
saw it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LABS = ("raabin", "pbc", "bccd")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--out", type=Path, default=Path("runs/finder"))
    ap.add_argument("--steps", type=int, default=1500, help="training steps of the shipped finder")
    ap.add_argument("--lolo-steps", type=int, default=1000, help="... of each leave-one-lab-out finder")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only-eval", action="store_true", help="score the finders already in OUT; train none")
    args = ap.parse_args(argv)
    d = args.data
    data = [f"raabin={d / 'raabin-wbc-train'}", f"pbc={d / 'pbc-5class'}"]
    fields = f"bccd={d / 'bccd-fields' / 'images'}:{d / 'bccd-fields' / 'wbc_boxes.csv'}"
    runs = {"all": [], **{f"no-{lab}": [lab] for lab in reversed(LABS)}}
    wbcnet = [sys.executable, "-m", "wbcnet", "finder"]
    for name, leave_out in runs.items():
        stem = args.out / name
        if stem.with_suffix(".json").is_file() or args.only_eval:
            continue
        cmd = [*wbcnet, "train", *sum((["--data", x] for x in data), []), "--fields", fields,
               *sum((["--leave-out", lab] for lab in leave_out), []), "--out", str(stem),
               "--steps", str(args.steps if name == "all" else args.lolo_steps), "--threads", str(args.threads), "--no-progress"]
        print(" ".join(cmd), flush=True)
        t = time.time()
        subprocess.run(cmd, check=True)
        print(f"{name}: {time.time() - t:.0f} s", flush=True)
    finders = [f"{name}={args.out / name}" for name in runs if (args.out / name).with_suffix(".json").is_file()]
    cmd = [*wbcnet, "evaluate", *sum((["--finder", f] for f in finders), []), "--finder", "classic=classic",
           *sum((["--data", x] for x in data), []), "--data", f"bccd={d / 'bccd-wbc-crops'}",
           "--fields", fields, "--stress", "--out", str(args.out / "eval"), "--no-progress"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    rows = json.loads((args.out / "eval" / "finder_eval.json").read_text())
    (args.out / "finder_table.md").write_text(table(rows))
    print(args.out / "finder_table.md")
    return 0


def table(rows: list[dict]) -> str:
    by = {r["finder"]: r for r in rows}
    cols = list(dict.fromkeys(c for r in rows for c in r if isinstance(r[c], dict)))
    out = ["Fields: recall / precision against the hand-drawn boxes. Pictures: share with a cell found / with "
           "the found centre in the picture's middle half.", "",
           "| finder | trained on | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, {})
            cells.append("—" if not v else f"{v['recall']:.3f} / {v['precision']:.3f}" if "recall" in v
                         else f"{v['found']:.3f} / {v['central']:.3f}")
        out.append(f"| {r['finder']} | {', '.join(r.get('trained_on', [])) or 'thresholds'} | " + " | ".join(cells) + " |")
    out += ["", "Each lab scored by the finder that never saw it (leave-one-lab-out):", "",
            "| lab | what | finder | value |", "|---|---|---|---|"]
    for lab in LABS:
        r = by.get(f"no-{lab}")
        if r is None:
            continue
        for c in cols:
            if c.startswith(lab) and c in r:
                v = r[c]
                val = (f"recall {v['recall']:.3f}, precision {v['precision']:.3f}" if "recall" in v
                       else f"a cell found in {v['found']:.3f}, in the middle half in {v['central']:.3f} ({v['n']} pictures)")
                out.append(f"| {lab} | {c} | no-{lab} | {val} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
