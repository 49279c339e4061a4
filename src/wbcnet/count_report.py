"""count.html: the differential, its bar chart, a few fields with their boxes, a gallery of the
cells of each class and the referred ones, and the scores against hand-drawn boxes where given.
Self-contained like report.html (htmlpage.py): no script, every picture a data URI."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from .data.imageio import ImageReadError, load_rgb
from .files import write_text_atomic
from .htmlpage import data_uri, escape, page, png_uri, table

# Enough to see what a class looks like and to spot a wrong one, few enough for a light page.
_GALLERY_PER_CLASS = 24
_GALLERY_REFERRED = 48
_FIELDS_SHOWN = 6


def _jpeg_uri(arr, side: int) -> str:
    img = Image.fromarray(arr)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def _thumbnails(cells, side: int = 96) -> list[str]:
    """A thumbnail of each cell's box, reading each field once."""
    out = [""] * len(cells)
    by_file: dict[str, list[int]] = {}
    for i, c in enumerate(cells):
        by_file.setdefault(c.file, []).append(i)
    for path, idx in by_file.items():
        try:
            rgb = load_rgb(path)
        except (ImageReadError, OSError):
            continue
        for i in idx:
            x0, y0, x1, y1 = cells[i].box
            if x1 > x0 and y1 > y0:
                out[i] = _jpeg_uri(rgb[y0:y1, x0:x1], side)
    return out


def _gallery(cells, classes, caption) -> str:
    if not cells:
        return '<p class="note">none</p>'
    items = []
    for c, uri in zip(cells, _thumbnails(cells)):
        k = int(c.probs.argmax())
        title = f"{Path(c.file).name} ({c.box[0]},{c.box[1]}): {classes[k]} {c.probs[k]:.2f}"
        items.append(f'<img class="thumb" src="{uri}" alt="{escape(title)}" title="{escape(title)}">' if uri else "")
    return f'<figure>{"".join(items)}<figcaption>{caption}</figcaption></figure>'


def render_count_report(out: Path, summary: dict, diff: dict, fields, cells, by_file) -> str:
    from .count import PALETTE
    from .plots import plot_differential

    classes = summary["classes"]
    chart = plot_differential(diff, out / "differential.png", PALETTE)
    parts = [f"<h1>wbcnet count</h1><p class=\"sub\">{summary['fields']} fields, {summary['cells_found']} white cells "
             f"found, checkpoint <code>{escape(summary['checkpoint'])}</code></p>"]
    facts = {"counted (in the differential)": summary["counted"],
             "referred (unfamiliar or below the confidence bar; not counted)": summary["referred"],
             "cut by the field's edge (listed, not counted)": summary["edge_skipped"],
             "fields without a white cell": summary["fields_without_cells"],
             "unreadable fields": len(summary["unreadable"])}
    if summary["target"]:
        t = summary["target"]
        facts[f"target of {t['cells']} cells"] = "reached" if t["reached"] else \
            f"NOT reached: {summary['counted']} of {t['cells']} counted"
    parts.append("<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts.items()) + "</dl>")
    if summary["target"] and not summary["target"]["reached"]:
        parts.append(f'<p class="warn">Only {summary["counted"]} cells were counted, fewer than the '
                     f'{summary["target"]["cells"]} asked for: add fields before reporting this differential.</p>')
    rows = [[escape(c), str(r["count"]), f"{r['percent']:.1f}%", f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]",
             str(r["referred"])] for c, r in diff["classes"].items()]
    parts.append("<h2>Differential</h2>" + table(["class", "count", "share", "95% interval (Wilson)", "referred"], rows,
                                                    muted_cols=(3,)))
    parts.append(f'<figure><img src="{png_uri(chart)}" alt="differential bar chart"></figure>')
    if "truth" in summary:
        t = summary["truth"]
        acc = "n/a" if t["type_accuracy"] is None else \
            f"{t['type_accuracy']:.3f} [{t['type_accuracy_ci'][0]:.3f}, {t['type_accuracy_ci'][1]:.3f}]"
        parts.append(
            f"<h2>Against the hand-drawn boxes</h2><p>{escape(t['file'])}: {t['fields_scored']} fields scored "
            f"({t['fields_not_in_truth']} not in the file, not scored). A found box matches a true one when "
            f"{escape(t['match_rule'])}.</p>" +
            table(["measure", "value"], [["detection recall", f"{t['recall']:.3f} ({t['matched']} of {t['true_boxes']})"],
                                         ["detection precision", f"{t['precision']:.3f} ({t['matched']} of {t['found_boxes']})"],
                                         ["type accuracy of matched cells", f"{acc} ({t['typed_matches']} typed)"],
                                         ["... of those counted (whole, not referred)",
                                          "n/a" if t["type_accuracy_counted"] is None else
                                          f"{t['type_accuracy_counted']:.3f} ({t['typed_counted']} typed)"]]) +
            table(["class", "found %", "true %", "found - true"],
                  [[escape(c), f"{e['found_percent']:.1f}", f"{e['true_percent']:.1f}", f"{e['error']:+.1f}"]
                   for c, e in t["differential_error"].items()]))
    shown = [f for f in fields if not f.error and by_file.get(f.path)][:_FIELDS_SHOWN]
    if shown:
        figs = []
        for f in shown:
            src = out / "fields" / f.drawn if f.drawn else f.path
            try:
                figs.append(f'<img src="{_jpeg_uri(load_rgb(src), 480)}" alt="{escape(Path(f.path).name)}" '
                            f'title="{escape(Path(f.path).name)}" style="margin:2px">')
            except (ImageReadError, OSError):
                continue
        parts.append(f"<h2>Fields</h2><figure>{''.join(figs)}<figcaption>The first {len(figs)} fields with cells; "
                     f"all are drawn in <code>fields/</code>. Grey: cut by the edge; black: referred.</figcaption></figure>")
    parts.append("<h2>Cells by class</h2>")
    for k, name in enumerate(classes):
        mine = [c for c in cells if c.counted and int(c.probs.argmax()) == k]
        mine.sort(key=lambda c: -float(c.probs[k]))
        parts.append(f"<h3>{escape(name)} ({len(mine)})</h3>" +
                     _gallery(mine[:_GALLERY_PER_CLASS], classes, f"the {min(len(mine), _GALLERY_PER_CLASS)} most confident"))
    referred = [c for c in cells if c.referred and not c.edge]
    parts.append(f"<h2>Referred cells ({len(referred)})</h2>" +
                 _gallery(referred[:_GALLERY_REFERRED], classes,
                          "for a person to classify: unlike the training labs' cells, or below --min-confidence; "
                          "the title of each names the model's best guess"))
    if summary["unreadable"]:
        parts.append("<h2>Unreadable fields</h2>" + table(["file", "reason"], [[escape(p), escape(r)]
                                                                            for p, r in summary["unreadable"]], (0, 1)))
    return page("wbcnet count", "\n".join(parts))


def write_count_report(out: Path, summary: dict, diff: dict, fields, cells, by_file) -> Path:
    path = Path(out) / "count.html"
    write_text_atomic(path, render_count_report(Path(out), summary, diff, fields, cells, by_file))
    return path
