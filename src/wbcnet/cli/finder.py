"""`wbcnet finder train` and `wbcnet finder evaluate`: the learned cell finder, reproducibly.

    wbcnet finder train --data raabin=RAABIN_DIR --data pbc=PBC_DIR --fields bccd=IMAGES_DIR:BOXES_CSV --out runs/finder
    wbcnet finder evaluate --finder all=runs/finder --data raabin=DIR --data pbc=DIR --crops bccd=DIR \
        --fields bccd=IMAGES_DIR:BOXES_CSV --stress --out runs/finder-eval

Argument parsing only; the work is in data/fields.py, training/finder.py and evaluation/finder.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import WbcnetError
from ..core.flags import add_flags, flag


def _named(text: str) -> tuple[str, str]:
    """NAME=PATH, the name required and any text (data/sources.parse_sources, by contrast, takes a plain
    path too, names it after its folder, and refuses names other than plain words and names used twice:
    a finder's flags keep what they have always taken, refused as they are typed)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH")
    name, path = text.split("=", 1)
    return name, path


def _field_set(text: str) -> tuple[str, str, str, str | None]:
    name, rest = _named(text)
    parts = rest.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=IMAGES_DIR:BOXES_CSV[:RED_CELL_BOXES_CSV]")
    return (name, *parts, None)[:4] if len(parts) == 2 else (name, *parts)


@dataclass(frozen=True)
class TrainFlags:
    data: list = flag([], "an ImageFolder of single-cell pictures (one white cell in the middle); repeatable",
                      append=True, type=_named, metavar="LAB=DIR")
    fields: list = flag([], "whole fields and their boxes (file,x0,y0,x1,y1 and a label column, every row a white "
                        "cell, or a kind column, WBC or RBC); OTHERS_CSV adds red-cell boxes (kind RBC) that teach the "
                        "field's scale; repeatable", append=True, type=_field_set,
                        metavar="LAB=IMAGES_DIR:BOXES_CSV[:OTHERS_CSV]")
    leave_out: list = flag([], "train without this lab's pictures (leave-one-lab-out); repeatable", append=True,
                           metavar="LAB")
    out: str = flag(None, "output stem: OUT.safetensors and OUT.json", required=True)
    steps: int = flag(1500)
    batch_size: int = flag(32)
    per_lab: int = flag(4000, "single-cell pictures drawn from each lab")
    seed: int = flag(0)
    threads: int = flag(0, "torch threads (0: torch's default)")
    cache_dir: str = flag(".cache/wbcnet/finder")


@dataclass(frozen=True)
class AdaptFlags:
    fields: str = flag(None, "the lab's fields (the points file names them)", required=True, metavar="DIR")
    points: str = flag(None, "file,x,y,kind: every white cell of each corrected field (kind wbc), and optionally "
                       "things that are not white cells (kind not); a field named here counts as fully marked",
                       required=True, metavar="CSV")
    out: str = flag(None, "the lab model's folder (classifier + the lab's finder)", required=True, metavar="DIR")
    checkpoint: str | None = flag(None, "the classifier to put in the lab model (default: the shipped one)")
    finder: str | None = flag(None, "the finder to start from (default: the shipped one)")
    steps: int = flag(300)
    seed: int = flag(0)


@dataclass(frozen=True)
class EvaluateFlags:
    finder: list = flag([], "a finder (.safetensors or its stem; 'shipped' for the packaged one, 'classic' for the "
                        "threshold finder); repeatable", append=True, type=_named, metavar="NAME=PATH")
    data: list = flag([], "single-cell pictures (ImageFolder); the share with a cell found in the middle is scored",
                      append=True, type=_named, metavar="LAB=DIR")
    fields: list = flag([], append=True, type=_field_set, metavar="LAB=IMAGES_DIR:BOXES_CSV")
    stress: bool = flag(False, "also score the fields degraded to each extreme")
    stresses: str | None = flag(None, "which degradations --stress scores (default: all; see evaluation/finder.py)",
                                metavar="A,B")
    limit: int = flag(1000, "single-cell pictures per lab (seeded draw)")
    seed: int = flag(1)
    out: str = flag(None, "folder for finder_eval.json and finder_eval.md", required=True)


def add_parser(sub, parents) -> None:
    finder = sub.add_parser("finder", help="train or evaluate the learned cell finder", parents=parents)
    fsub = finder.add_subparsers(dest="finder_command", required=True)
    for name, help, flags, func in (
            ("train", "train a finder on single-cell pictures and boxed fields", TrainFlags, cmd_train),
            ("adapt", "teach the finder a lab's fields: a few corrected fields -> a lab model", AdaptFlags, cmd_adapt),
            ("evaluate", "score finders on fields, a degraded stress set and single-cell pictures", EvaluateFlags,
             cmd_evaluate)):
        p = fsub.add_parser(name, help=help, parents=parents)
        add_flags(p, flags)
        p.set_defaults(func=func)


def _sources(args, leave_out=()):
    from ..data.fields import load_cell_pictures, load_fields

    sources = []
    for lab, path in args.data:
        if lab in leave_out:
            continue
        sources.append(load_cell_pictures(path, lab, args.per_lab, args.seed, args.cache_dir,
                                          progress=not args.no_progress))
    for lab, images, boxes, others in args.fields:
        if lab not in leave_out:
            sources.append(load_fields(images, boxes, lab, others))
    return sources


def cmd_train(args) -> int:
    from ..training.finder import FinderTrainConfig, fit

    for lab in args.leave_out:
        if lab not in {n for n, _ in args.data} | {f[0] for f in args.fields}:
            raise WbcnetError(f"--leave-out {lab}: no --data or --fields lab of that name")
    sources = _sources(args, set(args.leave_out))
    if not sources:
        raise WbcnetError("nothing to train on: give --data LAB=DIR or --fields LAB=IMAGES:BOXES")
    for s in sources:
        print(f"{s.lab}: {len(s)} {'fields' if s.kind == 'fields' else 'pictures'}", file=sys.stderr)
    cfg = FinderTrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                            labs=sorted({s.lab for s in sources}))
    out = fit(sources, cfg, args.out, progress=not args.no_progress)
    print(out)
    return 0


def cmd_adapt(args) -> int:
    from ..lab.finder import adapt_finder

    if args.steps < 1:
        raise WbcnetError(f"--steps {args.steps}: must be at least 1")
    if not Path(args.fields).is_dir():
        raise WbcnetError(f"{args.fields}: not a folder of fields")
    out = adapt_finder(args.fields, args.points, args.out, checkpoint=args.checkpoint, base=args.finder,
                       steps=args.steps, seed=args.seed, progress=not args.no_progress,
                       log=lambda m: print(m, file=sys.stderr))
    print(out)
    return 0


def _finder_functions(name: str, path: str):
    """(find_cell, find_cells) for a finder named on the command line."""
    if path == "classic":
        from ..cells import classic as locate_classic

        return locate_classic.find_cell, locate_classic.find_cells
    from ..cells.finder.net import load_finder

    finder = load_finder(None if path == "shipped" else path)
    return (lambda rgb: finder.find_central([rgb])[0]), finder.find_cells


def cmd_evaluate(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..core.imageio import is_candidate, load_rgb
    from ..data.fields import load_fields
    from ..evaluation.finder import ALL_STRESSES, score_fields, score_pictures

    if not args.finder:
        raise WbcnetError("give at least one --finder NAME=PATH")
    rng = np.random.default_rng(args.seed)
    pictures = {}
    for lab, root in args.data:
        paths = sorted(p for p in Path(root).glob("*/*") if is_candidate(p))
        if not paths:
            raise WbcnetError(f"{root}: no pictures found")
        if len(paths) > args.limit:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), args.limit, replace=False))]
        pictures[lab] = [load_rgb(p) for p in paths]
    fields = [load_fields(images, boxes, lab, others) for lab, images, boxes, others in args.fields]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, path in args.finder:
        find_cell, find_cells = _finder_functions(name, path)
        row = {"finder": name, "path": path}
        if path != "classic":
            from ..cells.finder.paths import SHIPPED_JSON

            meta = json.loads((SHIPPED_JSON if path == "shipped" else Path(path).with_suffix(".json")).read_text())
            row["trained_on"] = meta.get("trained_on", [])
        for src in fields:
            t = time.perf_counter()
            d = score_fields(find_cells, src)
            row[f"{src.lab} fields"] = {"recall": d.recall, "precision": d.precision, "true": d.true,
                                        "found": d.found, "matched": d.matched,
                                        "fields_per_s": len(src) / (time.perf_counter() - t)}
            if args.stress:
                kinds = ALL_STRESSES if not args.stresses else [k.strip() for k in args.stresses.split(",")]
                for k in kinds:
                    if k not in ALL_STRESSES:
                        raise WbcnetError(f"--stresses: {k!r} is not one of {', '.join(ALL_STRESSES)}")
                for kind in tqdm(kinds, desc=f"{name}: stress", disable=args.no_progress):
                    d = score_fields(find_cells, src, kind)
                    row[f"{src.lab} {kind}"] = {"recall": d.recall, "precision": d.precision, "true": d.true,
                                                "found": d.found, "matched": d.matched}
        for lab, pics in pictures.items():
            p = score_pictures(find_cell, pics)
            row[f"{lab} pictures"] = {"found": p.found_rate, "central": p.central_rate, "n": p.pictures}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        _write(out, rows)
    print(out / "finder_eval.md")
    return 0


def _write(out: Path, rows: list[dict]) -> None:
    (out / "finder_eval.json").write_text(json.dumps(rows, indent=2) + "\n")
    cols = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    head = ["finder", "trained on"] + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["finder"], ", ".join(r.get("trained_on", [])) or "—"]
        for c in cols:
            v = r.get(c)
            if v is None:
                cells.append("")
            elif "recall" in v:
                cells.append(f"R {v['recall']:.3f} / P {v['precision']:.3f}")
            else:
                cells.append(f"{v['found']:.3f} found, {v['central']:.3f} central")
        lines.append("| " + " | ".join(cells) + " |")
    (out / "finder_eval.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-progress", action="store_true")
    common.add_argument("--debug", action="store_true")
    parser = argparse.ArgumentParser(prog="python -m wbcnet.cli.finder")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub, [common])
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except WbcnetError as e:
        print(f"wbcnet finder: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
