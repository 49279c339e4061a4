"""`wbcnet tune`'s study shown: Optuna's own figures and tune.html (training/tune.py writes them)."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from .html import escape, page, png_uri, table


def tune_figures(study, out: Path, n_complete: int) -> list[str]:
    """Optuna's own matplotlib figures: the optimisation history, and the parameter importances
    once there are enough finished trials to estimate them."""
    from optuna.visualization import matplotlib as ovm

    from .plots import pyplot

    plt = pyplot()
    made = []
    jobs = [("history.png", ovm.plot_optimization_history), ("intermediate.png", ovm.plot_intermediate_values)]
    if n_complete >= 3:
        jobs.append(("importance.png", ovm.plot_param_importances))
    for name, plot in jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" warnings on every call
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as e:  # e.g. importances when every trial scored the same
                print(f"note: {name} not drawn ({e})", file=sys.stderr)
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7.5, 4.2)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        made.append(name)
    return made


def tune_page(summary: dict, header: list[str], rows: list[list], out: Path) -> str:
    best = summary["best"]
    parts = [f"<h1>wbcnet tune: {escape(summary['study'])}</h1>",
             "<p class=\"sub\">" + ", ".join(f"{n} {s}" for s, n in summary["states"].items() if n) + "</p>"]
    if best:
        parts.append(f"<p>Best: trial {best['trial']}, validation macro-F1 <b>{best['val_macro_f1']:.4f}</b>; "
                     f"its config is <code>best.yaml</code> (<code>wbcnet train --config best.yaml</code>).</p>" +
                     table(["setting", "value"], [[escape(k), escape(v)] for k, v in best["settings"].items()]))
    for name, caption in (("history.png", "optimisation history"), ("intermediate.png", "validation macro-F1 by epoch, "
                          "each trial a line (pruned ones stop early)"), ("importance.png", "parameter importances")):
        if name in summary["figures"]:
            parts.append(f'<figure><img src="{png_uri(out / name)}" alt="{caption}"><figcaption>{caption}</figcaption></figure>')
    cells = [[escape(f"{v:.4g}" if isinstance(v, float) else v) for v in r] for r in rows]
    parts.append("<h2>Trials</h2>" + table(header, cells, text_cols=(1,)))
    return page(f"wbcnet tune: {summary['study']}", "\n".join(parts))
