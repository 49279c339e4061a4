"""The learned cell finder, leave-one-lab-out, under stress, and taught: issue 27's table in one command.

    python -m benchmarks.finder_lolo --data ../shared/datasets --out runs/finder2

1. Trains finders with `wbcnet finder train` (skipping any already in OUT): `all` (every lab in
   view: Raabin-WBC and PBC single cells, BCCD and BCD fields; the shipped one), `no-bcd` and
   `no-bccd` (each field lab left out); with --pictures also `no-raabin` and `no-pbc`.
2. Scores each with `wbcnet finder evaluate` on BCCD's and BCD's fields, their stress sets
   (evaluation/finder.py: rescaled x0.3 to x3, vignetting 60%, defocus, pale, uneven light, ...;
   made with numpy/scipy/PIL, not the training's torch degradations, and never trained on) and
   single-cell pictures (1,000 a lab, seed 1).
3. Teaching: for each field lab, its left-out finder is taught 5 of its fields (seeded draw among
   fields with a white cell; points = the boxes' centres, as a person's clicks) with
   `wbcnet finder adapt`, and scored on the lab's other fields.
4. Writes OUT/finder_table.md: every finder on every set, then each lab's figure from the finder
   that never saw it, then teaching. `--copy-to` writes the table to benchmarks/results too.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FIELD_LABS = ("bccd", "bcd")
PICTURE_LABS = ("raabin", "pbc")
TEACH_FIELDS = 5
STRESS_SETS = "contrast x0.2,scale x0.3,0.5x magnification,scale x3,vignetting 60%,defocus,uneven light," \
              "pale + defocus + uneven light"


def field_files(d: Path) -> dict[str, tuple[Path, Path, Path | None]]:
    """Each field lab's images folder, box list and extra red-cell boxes (finder.data.load_fields' arguments)."""
    return {"bccd": (d / "bccd-fields" / "images", d / "bccd-fields" / "wbc_boxes.csv", d / "bccd-fields" / "other_boxes.csv"),
            "bcd": (d / "bcd-fields" / "images", d / "bcd-fields" / "boxes.csv", None)}


def field_sets(d: Path) -> dict[str, str]:
    """The same as `--fields LAB=IMAGES:BOXES[:OTHERS]` flags."""
    return {lab: f"{lab}=" + ":".join(str(p) for p in files if p is not None) for lab, files in field_files(d).items()}


def run(cmd: list[str]) -> None:
    print(" ".join(cmd), flush=True)
    t = time.time()
    subprocess.run(cmd, check=True)
    print(f"  {time.time() - t:.0f} s", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--out", type=Path, default=Path("runs/finder2"))
    ap.add_argument("--steps", type=int, default=3000, help="training steps of the shipped finder (all)")
    ap.add_argument("--lolo-steps", type=int, default=2000, help="... of each leave-one-lab-out finder")
    ap.add_argument("--pictures", action="store_true", help="also train and score no-raabin and no-pbc")
    ap.add_argument("--teach-steps", type=int, default=300)
    ap.add_argument("--only-eval", action="store_true", help="score the finders already in OUT; train none")
    ap.add_argument("--copy-to", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)
    d, out = args.data, args.out
    data = {"raabin": f"raabin={d / 'raabin-wbc-train'}", "pbc": f"pbc={d / 'pbc-5class'}"}
    fields = field_sets(d)
    left_out = list(FIELD_LABS) + (list(PICTURE_LABS) if args.pictures else [])
    runs = {"all": None, **{f"no-{lab}": lab for lab in left_out}}
    wbcnet = [sys.executable, "-m", "wbcnet"]
    for name, lab in runs.items():
        stem = out / name
        if stem.with_suffix(".json").is_file() or args.only_eval:
            continue
        run([*wbcnet, "finder", "train", *sum((["--data", x] for x in data.values()), []),
             *sum((["--fields", x] for x in fields.values()), []), *(["--leave-out", lab] if lab else []),
             "--out", str(stem), "--steps", str(args.steps if lab is None else args.lolo_steps), "--no-progress"])
    # Each finder scored on its own (eval/NAME/), skipped when done: the command resumes.
    rows = []
    for name in [*runs, "classic"]:
        path = "classic" if name == "classic" else str(out / name)
        if name != "classic" and not (out / name).with_suffix(".json").is_file():
            continue
        done = out / "eval" / name / "finder_eval.json"
        if not done.is_file():
            run([*wbcnet, "finder", "evaluate", "--finder", f"{name}={path}",
                 *sum((["--data", x] for x in data.values()), []), "--data", f"bccd={d / 'bccd-wbc-crops'}",
                 *sum((["--fields", x] for x in fields.values()), []), "--stress", "--stresses", STRESS_SETS,
                 "--out", str(done.parent), "--no-progress"])
        rows += json.loads(done.read_text())
    taught = [teach(lab, out, d, args.teach_steps) for lab in FIELD_LABS if (out / f"no-{lab}.json").is_file()]
    from benchmarks.common import cpu_summary, git_state

    text = (f"# The learned cell finder: leave-one-lab-out, stress sets, teaching\n\n"
            f"Made by `python -m benchmarks.finder_lolo --data {d} --out {out}` at commit {git_state()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU: {cpu_summary()}. Finders trained with seed 0: "
            f"all {args.steps} steps, the left-out ones {args.lolo_steps}. Labs in view: Raabin-WBC and PBC single cells, "
            f"BCCD and BCD fields. Heatmap threshold 0.3 (fixed before any scoring).\n\n"
            + table(rows, taught))
    (out / "finder_table.md").write_text(text)
    if args.copy_to:
        args.copy_to.write_text(text)
    print(out / "finder_table.md")
    return 0


def teach(lab: str, out: Path, d: Path, steps: int, seed: int = 0) -> dict:
    """The left-out finder taught TEACH_FIELDS of the lab's fields (points at its boxes' centres),
    scored on the others as `wbcnet finder evaluate` scores fields (finder.evaluate.score_fields)."""
    from wbcnet.data.fields import Source, load_fields
    from wbcnet.evaluation.finder import score_fields
    from wbcnet.cells.finder.net import load_finder

    images, boxes, others = field_files(d)[lab]
    src = load_fields(images, boxes, lab, others)
    with_cells = [i for i in range(len(src)) if len(src.cells[i])]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(with_cells, TEACH_FIELDS, replace=False).tolist())
    work = out / f"teach-{lab}"
    work.mkdir(parents=True, exist_ok=True)
    points = work / "points.csv"
    with open(points, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "x", "y", "kind"])
        for i in chosen:
            w.writerows([Path(src.paths[i]).name, cx, cy, "wbc"] for cx, cy, _ in src.cells[i].tolist())
    model = work / "model"
    if not (model / "finder.json").is_file():
        run([sys.executable, "-m", "wbcnet", "finder", "adapt", "--fields", str(images), "--points", str(points),
             "--finder", str(out / f"no-{lab}"), "--out", str(model), "--steps", str(steps), "--no-progress"])
    rest = [i for i in range(len(src)) if i not in chosen]
    others_only = Source(lab, "fields", [src.images[i] for i in rest], [src.cells[i] for i in rest],
                         [src.ignore[i] for i in rest], [src.paths[i] for i in rest])
    result = {"lab": lab, "fields_taught": [Path(src.paths[i]).name for i in chosen], "steps": steps,
              "wall_s": json.loads((model / "finder.json").read_text())["extra"]["wall_s"]}
    for name, finder in (("before", load_finder(out / f"no-{lab}")), ("after", load_finder(model / "finder"))):
        det = score_fields(finder.find_cells, others_only)
        result[name] = {"recall": det.recall, "precision": det.precision, "true": det.true, "found": det.found,
                        "matched": det.matched}
    print(json.dumps(result), flush=True)
    return result


def _cell(v: dict) -> str:
    if not v:
        return "—"
    if "recall" in v:
        return f"{v['recall']:.3f} / {v['precision']:.3f}"
    return f"{v['found']:.3f} / {v['central']:.3f}"


def table(rows: list[dict], taught: list[dict] = ()) -> str:
    by = {r["finder"]: r for r in rows}
    cols = list(dict.fromkeys(c for r in rows for c in r if isinstance(r[c], dict)))
    out = ["Fields: recall / precision against the hand-drawn white-cell boxes (count.match_boxes). Pictures: share "
           "with a cell found / with the found centre in the picture's middle half.", "",
           "| finder | trained on | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        out.append(f"| {r['finder']} | {', '.join(r.get('trained_on', [])) or 'thresholds'} | "
                   + " | ".join(_cell(r.get(c, {})) for c in cols) + " |")
    out += ["", "Each lab scored by the finder that never saw it (leave-one-lab-out):", "",
            "| lab | set | finder | recall / precision (fields) or found / central (pictures) |", "|---|---|---|---|"]
    for lab in (*FIELD_LABS, *PICTURE_LABS):
        r = by.get(f"no-{lab}")
        if r is None:
            continue
        for c in cols:
            if c.split(" ")[0] == lab and c in r:
                out.append(f"| {lab} | {c} | no-{lab} | {_cell(r[c])} |")
    if taught:
        out += ["", f"Teaching: the left-out finder taught {TEACH_FIELDS} of the lab's fields (`wbcnet finder adapt`, "
                    "points at the boxes' centres), scored on the lab's other fields:", "",
                "| lab | steps | fine-tune time | before: recall / precision | after: recall / precision |",
                "|---|---|---|---|---|"]
        for t in taught:
            out.append(f"| {t['lab']} | {t['steps']} | {t['wall_s']:.0f} s | {_cell(t['before'])} | {_cell(t['after'])} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
