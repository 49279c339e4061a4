"""One self-contained report.html per evaluation: every number and picture in one file.

Pictures are embedded as base64 data URIs, so the file can be mailed or archived on its own and
opens offline; there is no script, no external stylesheet, font or URL (render/html.py makes sure).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from .. import __version__
from ..core.files import write_text_atomic
from ..core.results import EvalResult
from .html import escape as _e
from .html import page, png_uri, table

SECTIONS = [("data", "Data"), ("metrics", "Metrics"), ("confusion", "Confusion"), ("calibration", "Calibration"),
            ("selective", "Selective prediction"), ("errors", "Errors"), ("explain", "Where it looked")]


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _ci(interval) -> str:
    return f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "n/a"


def _figure(path, alt: str, caption: str = "") -> str:
    if path is None or not Path(path).exists():
        return f'<p class="note">{_e(alt)}: not produced for this evaluation.</p>'
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{png_uri(path)}" alt="{_e(alt)}">{cap}</figure>'


def render_report(result: EvalResult, figures: dict[str, Path | None], title: str | None = None) -> str:
    """The HTML text of an evaluation (its EvalResult); `figures` maps
    names (confusion, per_class, training_curves, reliability, coverage, explain_by_class,
    explain_errors, error_gallery) to PNG files, missing or None where not produced."""
    r = result
    classes = r.classes
    ci = r.ci  # analysis.bootstrap_ci's plain dict
    cal = r.calibration
    n_res = ci.get("n_resamples")
    ci_note = (f"95% percentile-bootstrap intervals from {n_res} resamples of the {r.n} cells "
               f"(seed {ci.get('seed')})." if n_res else "No confidence intervals computed.")
    heading = title or "Evaluation"
    parts = [f"<h1>wbcnet report: {_e(heading)}</h1>",
             f'<p class="sub">generated {datetime.now():%Y-%m-%d %H:%M} by wbcnet {_e(__version__)}</p>',
             "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in SECTIONS) + "</nav>"]

    shift = r.shift
    if shift is not None and shift.warning:
        parts.append(f'<p class="warn"><b>Warning:</b> {_e(shift.warning)}</p>')

    # Data
    parts.append('<h2 id="data">Data and model</h2><dl>')
    for label, value in (("images", r.source), ("checkpoint", r.checkpoint), ("model", r.model),
                         ("cells evaluated", r.n), ("temperature", _fmt(cal.temperature, 3) if cal else None)):
        parts.append(f"<dt>{_e(label)}</dt><dd>{_e(value if value is not None else 'not recorded')}</dd>")
    parts.append("</dl>")
    support = [r.per_class[c]["support"] for c in classes]
    parts.append(table(["class", "cells", "share"],
                       [[_e(c), str(s), f"{s / max(r.n, 1):.1%}"] for c, s in zip(classes, support)]))
    if r.absent_classes:
        parts.append(f'<p class="note">No cells of {_e(", ".join(r.absent_classes))}: '
                     "their rows stay empty and macro averages leave them out.</p>")

    # Metrics
    parts.append(f'<h2 id="metrics">Metrics</h2><p>{_e(ci_note)}</p>')
    rows = [[name, _fmt(getattr(r, key)), _ci(ci.get(key))] for name, key in (
        ("accuracy", "accuracy"), ("balanced accuracy (mean recall)", "balanced_accuracy"), ("macro-F1", "macro_f1"))]
    rows.append(["weighted F1", _fmt(r.weighted_f1), ""])
    rows.append([f"ECE ({cal.n_bins if cal else 15} bins, top label)", _fmt(r.ece), ""])
    parts.append(table(["metric", "value", "95% CI"], rows, muted_cols=(2,)))
    pc_ci = ci.get("per_class", {})
    rows = []
    for c in classes:
        m, iv = r.per_class[c], pc_ci.get(c, {})
        rows.append([_e(c), str(m["support"]), _fmt(m["precision"]), _ci(iv.get("precision")), _fmt(m["recall"]),
                     _ci(iv.get("recall")), _fmt(m["f1"]), _ci(iv.get("f1"))])
    parts.append(table(["class", "cells", "precision", "95% CI", "recall", "95% CI", "F1", "95% CI"], rows,
                       muted_cols=(3, 5, 7)))
    parts.append(_figure(figures.get("per_class"), "per-class precision, recall and F1",
                         "Error bars: the bootstrap intervals above."))
    parts.append(_figure(figures.get("training_curves"), "training curves",
                         "From the run's metrics.csv; validation scores are those early stopping chose on."))

    # Confusion
    parts.append('<h2 id="confusion">Confusion matrices</h2>')
    parts.append(_figure(figures.get("confusion"), "confusion matrices",
                         "Rows: true class; columns: predicted. Left counts, right each row divided by its total "
                         "(the diagonal is recall)."))
    top = r.top_confusions
    if top:
        parts.append("<h3>Most frequent confusions</h3>")
        parts.append(table(["true", "predicted as", "cells", "share of the true class"],
                           [[_e(t["true"]), _e(t["predicted"]), str(t["count"]), f"{t['share_of_true']:.1%}"]
                            for t in top], text_cols=(0, 1)))
    else:
        parts.append('<p class="note">No confusions: every cell was classified correctly.</p>')

    # Calibration
    parts.append('<h2 id="calibration">Calibration</h2>')
    if cal:
        text = (f"Expected calibration error on these cells: <b>{_fmt(cal.ece)}</b> with the checkpoint's "
                f"temperature T = {_fmt(cal.temperature, 3)}")
        if cal.ece_uncalibrated is not None and cal.temperature != 1.0:
            text += (f"; {_fmt(cal.ece_uncalibrated)} without it (T = 1). Negative log-likelihood "
                     f"{_fmt(cal.nll)} with T, {_fmt(cal.nll_uncalibrated)} without")
        parts.append(f"<p>{text}. A well calibrated model's confidence of 0.8 is right 80% of the time.</p>")
    parts.append(_figure(figures.get("reliability"), "reliability diagram",
                         "Bars: accuracy of the cells in each confidence bin; dashed: perfect calibration; "
                         "below: how many cells fall in each bin."))

    # Selective prediction
    parts.append('<h2 id="selective">Selective prediction</h2>'
                 "<p>Answer only the most confident cells and refer the rest to a person "
                 "(<code>wbcnet predict --min-confidence</code>):</p>")
    sel = r.selective
    if sel:
        parts.append(table(["coverage", "accuracy", "min confidence"],
                           [[f"{x['coverage']:.0%}", _fmt(x["accuracy"]), _fmt(x["min_confidence"], 3)] for x in sel]))
    parts.append(_figure(figures.get("coverage"), "coverage against accuracy"))
    if shift is not None:
        parts.append(f"<p>Unfamiliar cells (unlike the training labs' cells: shift score above "
                     f"{_fmt(shift.threshold, 1)}): <b>{shift.n_unfamiliar}</b> of {r.n} "
                     f"({shift.share_unfamiliar:.1%}); accuracy of the others {_fmt(shift.accuracy_familiar)}, "
                     f"of the unfamiliar {_fmt(shift.accuracy_unfamiliar)}. Referring a cell when it is "
                     f"unfamiliar or below a minimum confidence:</p>")
        parts.append(table(["min confidence", "cells kept", "accuracy of kept"],
                           [[_fmt(x["min_confidence"], 2), f"{x['coverage']:.1%}", _fmt(x["accuracy_kept"])]
                            for x in shift.referral]))

    # Errors and explanations
    parts.append('<h2 id="errors">Misclassified cells</h2>')
    if top:
        parts.append(_figure(figures.get("error_gallery"), "gallery of misclassified cells",
                             "One row per (true, predicted) pair, most frequent first; the most confident mistakes "
                             "of each pair, confidence above each cell."))
    else:
        parts.append('<p class="note">None.</p>')
    parts.append('<h2 id="explain">Where the model looked</h2>'
                 "<p>Grad-CAM: which parts of the last convolutional feature map raised the score of the "
                 "predicted class (red: most). For mhcnn also its attention-pooling weights over the cell. "
                 "Each map is scaled to its own range; the attention's title says how peaked it is "
                 "(\u00d7N: its largest weight is N times an even spread; near \u00d71 the pattern is faint). "
                 "Captions: true class, predicted class and confidence; red captions are mistakes.</p>")
    parts.append(_figure(figures.get("explain_by_class"), "Grad-CAM and attention for sample cells of each class"))
    if top:
        parts.append(_figure(figures.get("explain_errors"), "Grad-CAM and attention for the most confident mistakes"))

    return page(f"wbcnet report: {heading}", "\n".join(parts))


def write_report(out, result: EvalResult, figures: dict[str, Path | None], title: str | None = None) -> Path:
    path = Path(out) / "report.html"
    write_text_atomic(path, render_report(result, figures, title))
    return path
