"""Several `wbcnet adapt --shots` curves on one figure, and their table in markdown: issue 19's
comparison of labelled, unlabelled and suggested cells (bash benchmarks/adapt_curves.sh runs them).

    python -m benchmarks.adapt_curve runs/adapt/raabin-pbc-labels runs/adapt/raabin-pbc-semi \
        runs/adapt/raabin-pbc-semi-suggested --out docs/adapt/raabin-only-to-pbc

Each folder holds the learning_curve.json that `wbcnet adapt --shots` wrote; a curve is named by
how its cells were picked and whether the unlabelled cells were used. Writes OUT.png and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from wbcnet.render.plots import pyplot


def curve_name(rows: list[dict]) -> str:
    picks = sorted({r.get("pick", "random") for r in rows if r["shots"]})
    unl = any(r.get("unlabelled") for r in rows)
    return f"{'/'.join(picks)} labelled" + (" + unlabelled" if unl else " only")


def summarise(rows: list[dict]) -> list[tuple[int, float, float, int]]:
    ks = sorted({r["shots"] for r in rows})
    out = []
    for k in ks:
        f = [r["macro_f1"] for r in rows if r["shots"] == k]
        out.append((k, float(np.mean(f)), float(np.std(f)), len(f)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.adapt_curve", description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--out", required=True, help="path without extension: OUT.png and OUT.md")
    ap.add_argument("--title", default="How many cells should a lab label?")
    a = ap.parse_args(argv)
    curves = []
    for folder in a.folders:
        path = Path(folder) / "learning_curve.json"
        if not path.is_file():
            print(f"{path}: no learning curve here (run wbcnet adapt --shots first)", file=sys.stderr)
            return 2
        d = json.loads(path.read_text())
        curves.append((curve_name(d["rows"]), summarise(d["rows"]), d))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, stats, _ in curves:
        ax.errorbar([s[0] for s in stats], [s[1] for s in stats], yerr=[s[2] for s in stats], marker="o", capsize=3,
                    label=name)
    ax.set_xlabel("labelled cells per class (0: no labels)")
    ax.set_ylabel("macro-F1 on the lab's scoring half")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(a.title)
    fig.tight_layout()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out.with_suffix(".png"), dpi=120)
    ks = sorted({s[0] for _, stats, _ in curves for s in stats})
    md = [f"Parent `{curves[0][2]['parent']}`, lab `{curves[0][2]['data']}`; macro-F1 mean ± sd over draws "
          f"(n draws).", "", "| curve | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for name, stats, _ in curves:
        by_k = {s[0]: s for s in stats}
        md.append(f"| {name} | " + " | ".join(f"{by_k[k][1]:.3f} ± {by_k[k][2]:.3f} ({by_k[k][3]})" if k in by_k
                                               else "—" for k in ks) + " |")
    plt.close(fig)
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
