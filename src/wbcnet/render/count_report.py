"""count.html: the differential, its bar chart, a few fields with their boxes, a gallery of the
cells of each class and the referred ones, and the scores against hand-drawn boxes where given.
Self-contained like report.html (render/html.py): no script, every picture a data URI.

It reads a CountResult and the pictures render/count.CountOutput kept while the count ran (the
drawn fields, each cell's picture): no field is read again here."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.results import CellResult, CountResult
from .html import data_uri, escape, page, png_uri, table

# Enough to see what a class looks like and to spot a wrong one, few enough for a light page.
GALLERY_PER_CLASS = 24
GALLERY_REFERRED = 48
FIELDS_SHOWN = 6


def jpeg_uri(picture, side: int) -> str:
    """A JPEG data URI of a picture (array or PIL image) shrunk to at most `side` pixels."""
    img = Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture.copy()
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def _gallery(cells: list[tuple[CellResult, np.ndarray]], caption: str) -> str:
    if not cells:
        return '<p class="note">none</p>'
    items = []
    for c, picture in cells:
        title = f"{Path(c.file).name} ({c.box[0]},{c.box[1]}): {c.class_name} {c.confidence:.2f}"
        items.append(f'<img class="thumb" src="{jpeg_uri(picture, 96)}" alt="{escape(title)}" title="{escape(title)}">'
                     if picture.size else "")
    return f'<figure>{"".join(items)}<figcaption>{caption}</figcaption></figure>'


def _rejected_gallery(items: list, caption: str) -> str:
    pics = [f'<img src="{jpeg_uri(p, 96)}" alt="not a white cell" title="score {c.score:.2f}">'
            for c, p in items if p.size]
    return f'<figure>{"".join(pics)}<figcaption>{caption}</figcaption></figure>'


def render_count_report(result: CountResult, chart: Path, shown: list, gallery: dict[str, list],
                        referred: list, rejected: list = ()) -> str:
    """The page. `chart`: the differential's PNG; `shown`: (file, drawn field) of the first fields
    with cells; `gallery`: per class (cell, picture) of its most confident counted cells;
    `referred`: (cell, picture) of the first referred cells; `rejected`: (candidate, picture) of
    the first candidates the finder judged not to be white cells."""
    r = result
    parts = [f"<h1>wbcnet count</h1><p class=\"sub\">{len(r.fields)} fields, {r.cells_found} white cells "
             f"found, model <b>{escape(r.model or '?')}</b> (<code>{escape(r.checkpoint)}</code>), finder "
             f"<code>{escape(r.finder)}</code></p>"]
    facts = {"counted (in the differential)": r.counted,
             "referred (unfamiliar or below the confidence bar; not counted)": r.referred,
             "cut by the field's edge (listed, not counted)": r.edge_skipped,
             "fields without a white cell": r.fields_without_cells,
             "looked at and judged not white cells (not counted)": r.rejected,
             "unreadable fields": len(r.unreadable)}
    if r.target is not None:
        facts[f"target of {r.target} cells"] = "reached" if r.target_reached else \
            f"NOT reached: {r.counted} of {r.target} counted"
    parts.append("<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts.items()) + "</dl>")
    if r.target is not None and not r.target_reached:
        parts.append(f'<p class="warn">Only {r.counted} cells were counted, fewer than the '
                     f'{r.target} asked for: add fields before reporting this differential.</p>')
    for text in r.warnings:
        parts.append(f'<p class="warn">{escape(text)}</p>')
    rows = [[escape(c), str(v.count), f"{v.percent:.1f}%", f"[{v.ci_low:.1f}, {v.ci_high:.1f}]", str(v.referred)]
            for c, v in r.differential.classes.items()]
    parts.append("<h2>Differential</h2>" + table(["class", "count", "share", "95% interval (Wilson)", "referred"], rows,
                                                    muted_cols=(3,)))
    parts.append(f'<figure><img src="{png_uri(chart)}" alt="differential bar chart"></figure>')
    if r.truth is not None:
        t = r.truth
        acc = "n/a" if t.type_accuracy is None else \
            f"{t.type_accuracy:.3f} [{t.type_accuracy_ci[0]:.3f}, {t.type_accuracy_ci[1]:.3f}]"
        parts.append(
            f"<h2>Against the hand-drawn boxes</h2><p>{escape(t.file)}: {t.fields_scored} fields scored "
            f"({t.fields_not_in_truth} not in the file, not scored). A found box matches a true one when "
            f"{escape(t.match_rule)}.</p>" +
            table(["measure", "value"], [["detection recall", f"{t.recall:.3f} ({t.matched} of {t.true_boxes})"],
                                         ["detection precision", f"{t.precision:.3f} ({t.matched} of {t.found_boxes})"],
                                         ["type accuracy of matched cells", f"{acc} ({t.typed_matches} typed)"],
                                         ["... of those counted (whole, not referred)",
                                          "n/a" if t.type_accuracy_counted is None else
                                          f"{t.type_accuracy_counted:.3f} ({t.typed_counted} typed)"]]) +
            table(["class", "found %", "true %", "found - true"],
                  [[escape(c), f"{e.found_percent:.1f}", f"{e.true_percent:.1f}", f"{e.error:+.1f}"]
                   for c, e in t.differential_error.items()]))
    if shown:
        figs = [f'<img src="{jpeg_uri(img, 480)}" alt="{escape(Path(f).name)}" title="{escape(Path(f).name)}" '
                f'style="margin:2px">' for f, img in shown]
        parts.append(f"<h2>Fields</h2><figure>{''.join(figs)}<figcaption>The first {len(figs)} fields with cells"
                     f"{'; all are drawn in <code>fields/</code>' if any(f.picture for f in r.fields) else ''}. "
                     f"Grey: cut by the edge; black: referred; thin white circles: judged not white cells."
                     f"</figcaption></figure>")
    parts.append("<h2>Cells by class</h2>")
    for name in r.classes:
        mine = gallery.get(name, [])
        n = r.differential.classes[name].count
        parts.append(f"<h3>{escape(name)} ({n})</h3>" + _gallery(mine, f"the {len(mine)} most confident"))
    parts.append(f"<h2>Referred cells ({r.referred})</h2>" +
                 _gallery(referred, "for a person to classify: unlike the training labs' cells, or below "
                                    "--min-confidence; the title of each names the model's best guess"))
    parts.append(f"<h2>Judged not white cells ({r.rejected})</h2>" +
                 _rejected_gallery(rejected, "what the finder looked at and did not count (red cells, platelets, "
                                             "stain, dark corners): if white cells are among them, teach the finder "
                                             "this lab (wbcnet finder adapt)"))
    if r.unreadable:
        parts.append("<h2>Unreadable fields</h2>" + table(["file", "reason"], [[escape(p), escape(why)]
                                                                            for p, why in r.unreadable], (0, 1)))
    return page("wbcnet count", "\n".join(parts))
