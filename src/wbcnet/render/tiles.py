"""Cells drawn in grids: a cell with its maps side by side (explain), and the error gallery of an
evaluation. One image pasted together and drawn with one imshow (see render_tiles)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def overlay(img_chw: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 (3, S, S) cell and a [0, 1] map -> float (S, S, 3): the map in the jet colours over the cell."""
    from matplotlib import colormaps

    rgb = img_chw.transpose(1, 2, 0).astype(np.float32) / 255
    return (1 - alpha) * rgb + alpha * colormaps["jet"](heat)[..., :3]


def render_tiles(rows: list[list[list[np.ndarray]]], captions: list[list[str]], colors: list[list[str]], path,
                 title: str, row_labels: list[str] | None = None,
                 panel_titles: list[list[list[str]]] | None = None, tile_in: float = 1.45) -> Path:
    """Draw rows of cells, each cell a few (S, S, 3) panels side by side with a caption above the
    first and `panel_titles[row][cell]` above the others.

    Everything is pasted into one image and drawn with a single imshow: a grid of dozens of
    matplotlib axes takes seconds to lay out and save, and this runs at the end of every training.
    Sizes below are in tiles (one panel = 1 tile = `tile_in` inches)."""
    from .plots import pyplot

    plt = pyplot()

    first = next(p for row in rows for cell in row for p in cell)
    s = first.shape[0]
    n_panels = max(len(cell) for row in rows for cell in row)
    per_row = max(len(row) for row in rows)
    lines = max(text.count("\n") + 1 for row in captions for text in row)
    panel_gap, cell_gap, caption_h, head_h = 0.03, (0.2 if n_panels > 1 else 0.08), 0.1 + 0.16 * lines, 0.4
    label_w = 1.1 if row_labels else 0.08
    cell_w = n_panels + (n_panels - 1) * panel_gap
    width = label_w + per_row * cell_w + (per_row - 1) * cell_gap + 0.08
    height = head_h + len(rows) * (caption_h + 1) + 0.08
    canvas = np.ones((round(height * s), round(width * s), 3), dtype=np.float32)
    fig = plt.figure(figsize=(width * tile_in, height * tile_in))
    ax = fig.add_axes([0, 0, 1, 1])
    for r, row in enumerate(rows):
        top = head_h + r * (caption_h + 1) + caption_h      # in tiles, from the top edge
        y0 = round(top * s)
        if row_labels:
            ax.text(label_w * s - 0.1 * s, y0 + s / 2, row_labels[r], ha="right", va="center", fontsize=10)
        for j, cell in enumerate(row):
            left = label_w + j * (cell_w + cell_gap)
            for k, panel in enumerate(cell):
                x0 = round((left + k * (1 + panel_gap)) * s)
                canvas[y0:y0 + s, x0:x0 + s] = panel
                if k and panel_titles:
                    ax.text(x0 + s / 2, y0 - 0.04 * s, panel_titles[r][j][k - 1], ha="center", va="bottom",
                            fontsize=9)
            ax.text(round(left * s), y0 - 0.04 * s, captions[r][j], ha="left", va="bottom", fontsize=9,
                    color=colors[r][j], linespacing=1.1)
    ax.imshow(canvas, interpolation="bilinear")
    ax.text(canvas.shape[1] / 2, 0.12 * s, title, ha="center", va="top", fontsize=11)
    ax.set_axis_off()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_explanation_grid(images: np.ndarray, maps: dict[str, np.ndarray], rows: list[np.ndarray], captions: dict,
                          correct: dict, path, title: str, row_labels: list[str] | None = None,
                          per_row: int = 3, notes: dict[str, list[str]] | None = None) -> Path:
    """One tile per cell: the cell, then each map over it. `rows` lists the cell indices of each
    row (long rows wrap at `per_row` cells); captions and correctness are keyed by cell index;
    `notes[map name][cell index]` is added to that map's title."""
    notes = notes or {}
    lines, labels = [], []
    for r, idx in enumerate(rows):
        for start in range(0, max(len(idx), 1), per_row):
            lines.append([int(i) for i in idx[start:start + per_row]])
            labels.append(row_labels[r] if row_labels and start == 0 else "")
    blank = np.ones(images.shape[2:] + (3,), dtype=np.float32)
    tiles = [[[images[i].transpose(1, 2, 0) / 255] + [overlay(images[i], m[i]) for m in maps.values()] for i in line]
             or [[blank]] for line in lines]
    texts = [[captions[i] for i in line] or ["no cells"] for line in lines]
    colors = [["#1a7f37" if correct[i] else "#c0392b" for i in line] or ["#666666"] for line in lines]
    titles = [[[name + (notes[name][i] if name in notes else "") for name in maps] for i in line] for line in lines]
    return render_tiles(tiles, texts, colors, path, title, labels if row_labels else None, titles)


def plot_error_gallery(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray,
                       classes: list[str], path, max_pairs: int = 10, per_pair: int = 8) -> Path | None:
    """One row per (true, predicted) pair, most frequent pair first; in each row the most confident
    of its mistakes, confidence above each cell. None when there are no mistakes."""
    wrong = y_true != y_pred
    if not wrong.any():
        return None
    pairs, counts = np.unique(np.stack([y_true[wrong], y_pred[wrong]], 1), axis=0, return_counts=True)
    order = sorted(range(len(pairs)), key=lambda i: (-counts[i], pairs[i][0], pairs[i][1]))[:max_pairs]
    tiles, texts, labels = [], [], []
    for pi in order:
        t, p = pairs[pi]
        idx = np.flatnonzero((y_true == t) & (y_pred == p))
        idx = idx[np.argsort(-confidence[idx], kind="stable")][:per_pair]
        tiles.append([[images[i].transpose(1, 2, 0) / 255] for i in idx])
        texts.append([f"{confidence[i]:.2f}" for i in idx])
        shown = f"\n(top {len(idx)})" if counts[pi] > len(idx) else ""
        labels.append(f"{classes[t]}\n-> {classes[p]}\n{counts[pi]} cell{'s' if counts[pi] > 1 else ''}{shown}")
    more = f"; {len(pairs) - len(order)} rarer pairs not shown" if len(pairs) > len(order) else ""
    return render_tiles(tiles, texts, [["black"] * len(t) for t in texts], path,
                        f"Misclassified cells by (true -> predicted), confidence above each cell{more}", labels)


def image_grid(rows: list[list[np.ndarray]], path, title: str, col_titles: list[str], row_labels: list[str],
               tile_in: tuple[float, float] = (1.3, 1.35), sizes: tuple[float, float, float] = (7, 7, 9),
               dpi: int = 80, quality: int = 85) -> Path:
    """Pictures in rows, one matplotlib axes each: a title above each column, a label left of each
    row, `title` above all (`sizes`: their font sizes, in that order); `tile_in`: one picture's
    width and height in inches. For the docs' figures (scripts/augment_figure.py, stain_figure.py),
    whose few dozen pictures lay out in a moment; a JPEG `path` is saved at `quality`."""
    from .plots import pyplot

    plt = pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(tile_in[0] * n_cols, tile_in[1] * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            ax = axes[i, j]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col_titles[j], fontsize=sizes[0])
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=sizes[1])
    fig.suptitle(title, fontsize=sizes[2])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, pil_kwargs={"quality": quality})
    plt.close(fig)
    return path
