"""Pictures of results: a colour per class, and a field drawn with its cells' boxes."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.results import CellResult

# A colour per class for the boxes, the bars and the gallery (matplotlib's tab10, in order).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def class_colours(classes: list[str]) -> list[str]:
    return [PALETTE[k % len(PALETTE)] for k in range(len(classes))]


def draw_field(picture: np.ndarray, cells: list[CellResult], classes: list[str], scale: float = 1.0,
               rejected: list = ()) -> Image.Image:
    """The field with its boxes: class colour and name with confidence; edge cells grey and
    labelled `edge`, referred cells black and labelled `refer`; `rejected` candidates (judged not
    white cells) as thin white circles. `picture` is the field at `scale` picture pixels per
    field pixel (the boxes are in field pixels)."""
    img = Image.fromarray(picture)
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 320))
    for r in rejected:
        draw.ellipse(tuple(int(round(v * scale)) for v in r.box), outline="#ffffff", width=max(1, width // 2))
    font = ImageFont.load_default(size=max(12, round(max(img.size) / 45)))
    for c in cells:
        k = classes.index(c.class_name)
        colour = "#888888" if c.edge else "#000000" if c.refer else PALETTE[k % len(PALETTE)]
        box = tuple(int(round(v * scale)) for v in c.box)
        draw.rectangle(box, outline=colour, width=width)
        text = ("edge: " if c.edge else "refer: " if c.refer else "") + f"{c.class_name} {c.confidence:.2f}"
        tall = font.size + 4
        # Above the box where there is room, else just inside its top.
        x, y = box[0] + width, box[1] - tall if box[1] >= tall else box[1] + width
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=colour)
        draw.text((x, y), text, fill="white", font=font)
    return img
