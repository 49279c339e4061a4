"""`wbcnet audit`'s result (data/audit.run_audit) shown: a table for the terminal (`format_table`),
and audit.json with a self-contained audit.html (`write_audit`)."""
from __future__ import annotations

import json
from pathlib import Path

from ..data.near_duplicates import NEAR_DUPLICATE_MIN_SCORE
from . import html as htmlpage

HTML_MAX_PAIRS = 60                     # image pairs shown in audit.html


def write_audit(result: dict, out_dir) -> tuple[Path, Path]:
    """Write `audit.json` and a self-contained `audit.html` (inline CSS, images as base64 data
    URIs) into `out_dir`; return their paths. The HTML shows the near-duplicate pairs side by side,
    read again from disk, so it needs the images to still be where the audit found them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "audit.json", out_dir / "audit.html"
    json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    html_path.write_text(_render_html(result), encoding="utf-8")
    return json_path, html_path


def format_table(result: dict) -> str:
    """A plain-text report for the terminal, most important findings (warnings) first."""
    lines = [f"Audit of {result['root']}: {result['n_images']} readable images in {len(result['classes'])} classes "
             f"({result['n_files']} files, {result['seconds']} s)"]
    if result["warnings"]:
        lines += ["", "WARNINGS"] + [f"  ! {w}" for w in result["warnings"]]

    lines += ["", "Classes"]
    colour = result["colour"]["per_class"]
    shortcut = result["colour"]["shortcut"]["classes"]
    rows = [("class", "images", "share", "mean RGB", "background RGB", "sat", "bg AUC", "flag")]
    for c in result["classes"]:
        col, sc = colour.get(c), shortcut.get(c, {})
        rows.append((c, str(result["class_counts"][c]), f"{result['class_share'][c]:.1%}",
                     _rgb_text(col["mean_rgb"]) if col else "-", _rgb_text(col["background_rgb"]) if col else "-",
                     f"{col['mean_saturation']:.2f}" if col else "-",
                     f"{sc['auc']:.3f}" if sc.get("auc") is not None else "-",
                     "SHORTCUT" if sc.get("flagged") else ""))
    lines += _table(rows)
    ratio = result["imbalance_ratio"]
    lines.append(f"  imbalance (largest / smallest class): {'inf' if ratio is None else f'{ratio:.1f}'}")
    lines.append(f"  colour criterion: {result['colour']['shortcut']['criterion']}")

    lines += ["", "Files"]
    lines.append(f"  unreadable: {len(result['unreadable'])}   skipped by the scan: {len(result['skipped'])}")
    for item in result["unreadable"][:20]:
        lines.append(f"    {item['path']}: {item['reason']}")
    for item in result["skipped"][:10]:
        lines.append(f"    skipped {item['path']}: {item['reason']}")
    sizes = ", ".join(f"{s['width']}x{s['height']} ({s['count']})" for s in result["sizes"][:6])
    lines.append(f"  sizes: {sizes}{' ...' if len(result['sizes']) > 6 else ''}")
    lines.append("  modes: " + ", ".join(f"{m} ({n})" for m, n in result["modes"].items())
                 + "   formats: " + ", ".join(f"{f} ({n})" for f, n in result["formats"].items()))

    lines += ["", "Duplicates"]
    lines += _duplicate_lines("within the set", result["exact_duplicates"], result["near_duplicates"],
                              result["near_duplicate_summary"])
    if result["against"]:
        a = result["against"]
        lines.append(f"  against {a['root']} ({a['n_images']} images, {len(a['unreadable'])} unreadable):")
        lines += _duplicate_lines("across the two sets", a["exact_duplicates"], a["near_duplicates"],
                                  a["near_duplicate_summary"])
    return "\n".join(lines)


def _rgb_text(rgb) -> str:
    return "/".join(f"{v:.0f}" for v in rgb)


def _table(rows: list[tuple]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
            for r in rows]


def _duplicate_lines(where: str, exact: list[dict], near: list[dict], summary: dict, show: int = 10) -> list[str]:
    lines = [f"  exact duplicates {where}: {len(exact)} group(s)"]
    for g in exact[:show]:
        lines.append("    " + "  =  ".join(g["paths"] + g.get("against_paths", [])))
    lines.append(f"  near-duplicates {where}: {summary['pairs']} pair(s) over {summary['images']} images "
                 f"({summary['different_group']} across field-of-view groups, {summary['different_class']} across "
                 f"classes; score >= {NEAR_DUPLICATE_MIN_SCORE})")
    for p in near[:show]:
        lines.append(f"    {p['score']:.3f}  {p['a']}  ~  {p['b']}")
    if len(near) > show:
        lines.append(f"    ... {len(near) - show} more in audit.json")
    return lines


def _render_html(result: dict) -> str:
    esc = htmlpage.escape
    parts = [f"<h1>Audit of <code>{esc(result['root'])}</code></h1>",
             f"<p>{result['n_images']} readable images, {len(result['classes'])} classes, {result['n_files']} files; "
             f"{result['seconds']} s.</p>"]
    if result["warnings"]:
        parts.append("<h2>Warnings</h2>" + "".join(f'<div class="warn">{esc(w)}</div>' for w in result["warnings"]))

    parts.append("<h2>Classes and colour</h2>")
    rows = []
    for c in result["classes"]:
        col = result["colour"]["per_class"].get(c)
        v = result["colour"]["shortcut"]["classes"].get(c, {})
        rows.append([esc(c), str(result["class_counts"][c]), f"{result['class_share'][c]:.1%}",
                     _swatch(col["mean_rgb"]) if col else "-", _swatch(col["background_rgb"]) if col else "-",
                     str(col["mean_hue_deg"]) if col else "-", str(col["mean_saturation"]) if col else "-",
                     "-" if v.get("auc") is None else f"{v['auc']:.3f}",
                     " / ".join(f"{d:+.2f}" for d in v.get("background_effect_rgb", [])),
                     '<span class="flag">shortcut</span>' if v.get("flagged") else ""])
    parts.append(htmlpage.table(["class", "images", "share", "mean RGB", "background RGB", "hue", "saturation",
                                 "background AUC", "background d (R/G/B)", ""], rows, text_cols=(0, 3, 4, 9)))
    ratio = result["imbalance_ratio"]
    parts.append(f"<p>Imbalance (largest / smallest class): {'inf' if ratio is None else f'{ratio:.1f}'}.</p>"
                 f'<p class="note">{esc(result["colour"]["shortcut"]["criterion"])}</p>')

    parts.append(f"<h2>Files</h2><p>{len(result['unreadable'])} unreadable, {len(result['skipped'])} skipped.</p>")
    if result["unreadable"] or result["skipped"]:
        parts.append(htmlpage.table(["file", "reason"], [[f"<code>{esc(x['path'])}</code>", esc(x["reason"])]
                                                         for x in result["unreadable"] + result["skipped"]],
                                    text_cols=(0, 1)))
    parts.append(htmlpage.table(["size", "images"], [[f"{s['width']} x {s['height']}", str(s["count"])]
                                                     for s in result["sizes"][:20]]))
    parts.append("<p>Modes: " + esc(", ".join(f"{m} ({n})" for m, n in result["modes"].items())) + ". Formats: "
                 + esc(", ".join(f"{f} ({n})" for f, n in result["formats"].items())) + ".</p>")

    parts.append("<h2>Duplicates within the set</h2>")
    parts.append(_html_duplicates(result["exact_duplicates"], result["near_duplicates"],
                                  result["near_duplicate_summary"]))
    if result["against"]:
        a = result["against"]
        parts.append(f"<h2>Duplicates shared with <code>{esc(a['root'])}</code></h2>"
                     f"<p>{a['n_images']} images there, {len(a['unreadable'])} unreadable.</p>")
        parts.append(_html_duplicates(a["exact_duplicates"], a["near_duplicates"], a["near_duplicate_summary"]))
    parts.append(f'<p class="note">Near-duplicate score: best normalised correlation of band-passed polar '
                 f"thumbnails (ring means removed) over all rotations, mirror states and radial scales "
                 f"{result['settings']['radial_scales']}; "
                 f"pairs scoring &ge; {NEAR_DUPLICATE_MIN_SCORE} are reported.</p>")
    return htmlpage.page("wbcnet audit", "\n".join(parts))


def _swatch(rgb) -> str:
    colour = ",".join(str(int(round(x))) for x in rgb)
    square = f'<span class="swatch" style="background: rgb({colour})"></span>'
    return f'<span class="nowrap">{square} {_rgb_text(rgb)}</span>'


def _html_duplicates(exact: list[dict], near: list[dict], summary: dict) -> str:
    esc = htmlpage.escape
    parts = [f"<p>{len(exact)} group(s) of byte-identical files; {summary['pairs']} near-duplicate pair(s) over "
             f"{summary['images']} images ({summary['different_group']} across field-of-view groups, "
             f"{summary['different_class']} across classes).</p>"]
    if exact:
        groups = [" = ".join(g["paths"] + g.get("against_paths", [])) for g in exact]
        parts.append(htmlpage.table(["identical files"], [[f"<code>{esc(g)}</code>"] for g in groups]))
    if near:
        rows = []
        for p in near[:HTML_MAX_PAIRS]:
            uris = (htmlpage.thumbnail_uri(p["a"]), htmlpage.thumbnail_uri(p["b"]))
            imgs = "".join(f'<img class="thumb" src="{uri}" alt="">' for uri in uris if uri)
            rows.append([f'<span class="nowrap">{imgs}</span>', f"{p['score']:.3f}",
                         f"<code>{esc(p['a'])}</code> ({esc(p['class_a'])})<br>"
                         f"<code>{esc(p['b'])}</code> ({esc(p['class_b'])})"])
        parts.append(htmlpage.table(["pair", "score", "files"], rows, text_cols=(0, 2)))
        if len(near) > HTML_MAX_PAIRS:
            parts.append(f'<p class="note">{len(near) - HTML_MAX_PAIRS} more pairs in audit.json.</p>')
    return "".join(parts)
