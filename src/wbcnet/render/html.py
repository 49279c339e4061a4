"""Self-contained HTML pages: the evaluation's report.html and the audit's audit.html.

A page made here has no script and no address outside itself: the stylesheet is inline and every
picture is a base64 data URI, so the file opens offline and can be mailed or archived on its own.
Both pages share this shell, stylesheet, escaping and table markup, so they look alike.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from ..core.imageio import ImageReadError, load_rgb

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1.2em 2em 3em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.1em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.93em; }
th, td { border: 1px solid #d8d8d8; padding: 0.3em 0.7em; text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f5f7; } .t { text-align: left; } .muted { color: #555; font-size: 0.9em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; }
dt { font-weight: 600; } dd { margin: 0; word-break: break-all; }
figure { margin: 0.8em 0 1.4em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.3em; }
.note { color: #666; font-style: italic; }
code { word-break: break-all; } .nowrap { white-space: nowrap; }
.warn { background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; margin: 0.3em 0; }
.flag { color: #b00020; font-weight: bold; }
.swatch { display: inline-block; width: 1.2em; height: 1.2em; vertical-align: middle; border: 1px solid #999; }
img.thumb { width: 96px; height: 96px; margin-right: 4px; }
"""


def escape(value) -> str:
    """Any value as text that is safe inside an element or a quoted attribute."""
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def png_uri(path) -> str:
    """A PNG file, such as a plot, as a data URI."""
    return data_uri(Path(path).read_bytes(), "image/png")


def thumbnail_uri(path, size: int = 96) -> str:
    """Any image file wbcnet can read as a small JPEG data URI; '' when it cannot be read, e.g.
    when it has gone since an audit listed it."""
    try:
        arr = load_rgb(path, size)
    except (ImageReadError, OSError):
        return ""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def table(header: list[str], rows: list[list[str]], text_cols: tuple[int, ...] = (0,),
          muted_cols: tuple[int, ...] = ()) -> str:
    """A table of `rows` whose cells are HTML already (escape text before); `header` is plain
    text. Numbers align right, `text_cols` left; `muted_cols` are small and grey (intervals)."""
    def cls(j):
        return ' class="muted"' if j in muted_cols else ' class="t"' if j in text_cols else ""

    head = "".join(f"<th{cls(j)}>{escape(h)}</th>" for j, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(j)}>{c}</td>" for j, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """The whole document around `body` (HTML), with the shared stylesheet."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            # An empty inline icon: otherwise the browser asks for /favicon.ico and logs a 404.
            f'<link rel="icon" href="data:,">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")
