"""Train the learned finder: synthetic canvases from every picture we have, degraded past the labs
we can see.

A training example is a `canvas` x `canvas` picture made on the fly from the sources
(data/fields.py), in one of three ways:
- one picture, scaled so one of its cells is 14 to 110 px across (0.3x to 2x of any lab's
  magnification at the finder's working sizes), shifted so cells are cut by the edge or, one
  time in eight or so, missed altogether (an empty field); where the picture ends the canvas is
  its plasma (a tight crop) or, rarely, black (a lab's padding);
- a 2 x 2 mosaic of such pictures at smaller scales: many cells in one field, from several labs;
- a whole field (BCCD) scaled the same way.
Then every canvas is degraded (`degrade`) over and past the ranges issue 18 measured: nucleus
contrast down to 0.15x, 40 grey levels of range, blur, vignetting, stain and background colour
casts, grey pictures, sensor noise and JPEG.

Targets are CenterNet's: a Gaussian at each cell's centre on the stride-4 grid, the log radius
and the centre's offset there. Cells the labels are unsure of are left out of the loss. A fourth
target, everywhere on the grid, is the log diameter of the red cells of the picture a tile came
from at the scale it was drawn at: the field's scale, which the finder reads instead of a
threshold ruler (cells/finder/net.py). Pictures whose red cells are unknown are left out of it.

Every red cell, platelet and speck of stain in a field is a negative: fields (BCCD, BCD) have
every white cell boxed, and the focal loss weighs a confident false find most, the hard negatives.
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..cells.finder.net import STRIDE, FinderConfig, FinderNet, save_finder
from ..data.fields import Source
from ..engine.optim import make_optimizer
from ..engine.schedule import Schedule

# Cell diameters in a training canvas (working pixels), drawn log-uniformly.
DIAMETERS = (14.0, 110.0)
MOSAIC_DIAMETERS = (14.0, 56.0)


@dataclass
class FinderTrainConfig:
    steps: int = 1500
    batch_size: int = 32
    canvas: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 0            # torch threads (0: torch's default)
    mosaic: float = 0.3         # share of canvases that are 2x2 mosaics
    field_share: float = 0.4    # share of single canvases drawn from whole fields, where there are any
    widths: tuple = (16, 32, 48, 64, 96)
    neck: int = 32
    labs: list = field(default_factory=list)


# -- canvases ---------------------------------------------------------------------------------

def _plasma(rgb: np.ndarray) -> np.ndarray:
    small = rgb[::8, ::8].reshape(-1, 3).astype(np.float32)
    b = small.sum(1)
    return np.median(small[b >= np.quantile(b, 0.85)], axis=0)


def _place(rng, src: Source, i: int, size: int, diameters) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Picture i of src scaled and shifted onto a size x size canvas: (canvas, cells, ignore, its
    red cells' diameter there, nan if unknown)."""
    rgb = src.images[i]
    cells, ignore = src.cells[i], src.ignore[i]
    h, w = rgb.shape[:2]
    d = math.exp(rng.uniform(math.log(diameters[0]), math.log(diameters[1])))
    if len(cells):
        k = rng.integers(len(cells))
        scale = d / (2 * cells[k, 2])
        anchor = cells[k, :2]
    else:
        scale = rng.uniform(0.2, 1.0) * size / max(h, w)
        anchor = np.array([w / 2, h / 2])
    scale = min(scale, 4.0)
    red = src.red_cell(i) * scale
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    img = np.asarray(Image.fromarray(rgb).resize((sw, sh), Image.Resampling.BILINEAR, reducing_gap=2.0 if scale < 0.5 else None))
    # Where the anchor cell lands: mostly well inside, sometimes cut by the edge or off the canvas.
    if rng.random() < 0.85:
        pos = rng.uniform(0.1 * size, 0.9 * size, 2)
    else:
        pos = rng.uniform(-0.5 * size, 1.5 * size, 2)
    ox, oy = pos - anchor * scale  # canvas = picture * scale + offset
    ox, oy = int(round(ox)), int(round(oy))
    move = lambda c, tx, ty: (np.column_stack([
        (c[:, 0] * scale if tx % 2 == 0 else sw - 1 - c[:, 0] * scale) + ox + tx * sw,
        (c[:, 1] * scale if ty % 2 == 0 else sh - 1 - c[:, 1] * scale) + oy + ty * sh,
        c[:, 2] * scale]) if len(c) else c.reshape(0, 3))
    if rng.random() < 0.15:
        # The picture alone, on its plasma (a tight crop) or, rarely, on black (a lab's padding).
        fill = np.zeros(3) if rng.random() < 0.3 else _plasma(rgb)
        canvas = np.empty((size, size, 3), np.float32)
        canvas[...] = fill
        y0, x0 = max(0, oy), max(0, ox)
        y1, x1 = min(size, oy + sh), min(size, ox + sw)
        if y1 > y0 and x1 > x0:
            canvas[y0:y1, x0:x1] = img[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        return canvas, move(cells, 0, 0), move(ignore, 0, 0), red
    # Mirror-tiled copies of the picture cover the canvas, as a field would be covered, and every
    # copy's cells are cells (a small picture at a low magnification becomes a field of cells).
    block = np.concatenate([np.concatenate([img, img[:, ::-1]], 1), np.concatenate([img[::-1], img[::-1, ::-1]], 1)], 0)
    py, px = (-oy) % (2 * sh), (-ox) % (2 * sw)
    big = np.tile(block, (-(-(py + size) // (2 * sh)), -(-(px + size) // (2 * sw)), 1))
    canvas = big[py:py + size, px:px + size].astype(np.float32)
    found, unsure = [], []
    for ty in range(-((oy + sh) // sh) - 1, (size - oy) // sh + 2):
        for tx in range(-((ox + sw) // sw) - 1, (size - ox) // sw + 2):
            found.append(move(cells, tx, ty))
            unsure.append(move(ignore, tx, ty))
    near = lambda c: c[(c[:, 0] > -c[:, 2]) & (c[:, 0] < size + c[:, 2]) & (c[:, 1] > -c[:, 2]) & (c[:, 1] < size + c[:, 2])]
    return canvas, near(np.concatenate(found)), near(np.concatenate(unsure)), red


def make_canvas(rng, sources: list[Source], size: int, mosaic: float, field_share: float):
    """One training canvas (size x size x 3 float32, 0-255) with its cells, cells to ignore and
    its red cells' diameter (a 1 x 1, or for a mosaic 2 x 2, map; nan where unknown)."""
    if rng.random() < mosaic:
        half = size // 2
        parts = [make_canvas_single(rng, sources, half, field_share, MOSAIC_DIAMETERS) for _ in range(4)]
        canvas = np.empty((size, size, 3), np.float32)
        cells, ignore = [], []
        red = np.array([p[3] for p in parts], np.float32).reshape(2, 2)
        for j, (c, ce, ig, _) in enumerate(parts):
            dy, dx = (j // 2) * half, (j % 2) * half
            canvas[dy:dy + half, dx:dx + half] = c
            # A cell cut by the tile's edge is cut for real: its circle beyond the tile is gone,
            # so keep it only when its centre stays on the tile.
            for arr, out in ((ce, cells), (ig, ignore)):
                if len(arr):
                    inside = (arr[:, 0] >= 0) & (arr[:, 0] < half) & (arr[:, 1] >= 0) & (arr[:, 1] < half)
                    out.append(arr[inside] + [dx, dy, 0])
                    # A cell centred outside the tile but reaching into it is unsure: ignore it.
                    out_but_near = ~inside & _reaches(arr, half)
                    ignore.append(arr[out_but_near] + [dx, dy, 0])
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros((0, 3), np.float32)
        return canvas, cat(cells), cat(ignore), red
    canvas, cells, ignore, red = make_canvas_single(rng, sources, size, field_share, DIAMETERS)
    return canvas, cells, ignore, np.array([[red]], np.float32)


def _reaches(cells: np.ndarray, size: int) -> np.ndarray:
    nx = np.clip(cells[:, 0], 0, size - 1)
    ny = np.clip(cells[:, 1], 0, size - 1)
    return np.hypot(nx - cells[:, 0], ny - cells[:, 1]) < cells[:, 2]


def make_canvas_single(rng, sources, size, field_share, diameters):
    fields = [s for s in sources if s.kind == "fields" and len(s)]
    cells = [s for s in sources if s.kind == "cells" and len(s)]
    if fields and (not cells or rng.random() < field_share):
        src = fields[rng.integers(len(fields))]
    else:
        src = cells[rng.integers(len(cells))]
    return _place(rng, src, int(rng.integers(len(src))), size, diameters)


# -- degrading (batched, torch) ---------------------------------------------------------------

def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Nx3xHxW in [0, 1] -> the same pictures as other labs, microscopes and cameras might show them."""
    n, _, h, w = x.shape
    u = lambda *shape: torch.rand(*shape, generator=gen)
    on = lambda p: (u(n) < p).float().view(n, 1, 1, 1)
    # Stain: in optical density, scale the stain's strength (nucleus contrast 0.15x to 1.4x) and
    # tint each channel's absorption; shift the background's colour (yellow, grey, blue casts).
    od = -torch.log(x + 1 / 256)
    # The plasma: the palest tenth, from every 4th pixel (quantile sorts: the full picture costs 10x).
    plasma = od[:, :, ::4, ::4].flatten(2).quantile(0.1, dim=2).view(n, 3, 1, 1)
    k = torch.exp(math.log(0.15) + u(n) * (math.log(1.4) - math.log(0.15))).view(n, 1, 1, 1)
    k = torch.where(on(0.75) > 0, k, torch.ones_like(k))
    tint = torch.where(u(n, 1, 1, 1) < 0.5, 0.7 + 0.6 * u(n, 3, 1, 1), torch.ones(n, 3, 1, 1))
    cast = torch.where(u(n, 1, 1, 1) < 0.5, (u(n, 3, 1, 1) - 0.5) * 0.3, torch.zeros(n, 3, 1, 1))
    # Stain spectra: each channel's absorption mixed a little into the others and the colour's
    # saturation changed, so a red cell's and a nucleus's colours move apart or together (BCD's
    # red cells are a saturated pink that no lab we trained on shows).
    stain = od - plasma
    mix = torch.eye(3) + 0.15 * torch.randn(n, 3, 3, generator=gen)
    mixed = torch.einsum("nij,njhw->nihw", mix, stain)
    grey = mixed.mean(1, keepdim=True)
    mixed = grey + (0.4 + 1.2 * u(n, 1, 1, 1)) * (mixed - grey)
    stain = torch.where(on(0.6) > 0, mixed, stain)
    od = (plasma + cast).clamp(min=0) + k * tint * stain
    x = (torch.exp(-od) - 1 / 256).clamp(0, 1)
    # Blur (one sigma per call for the chosen pictures; the call is per batch).
    pick = torch.nonzero(u(n) < 0.3).flatten()
    if len(pick):
        x = x.clone()
        x[pick] = blur(x[pick], 0.3 + 2.2 * u(1).item())
    # Uneven light: up to 50% darker at the corners, from an off-centre middle.
    yy = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    cy, cx = (u(n) - 0.5).view(n, 1, 1, 1), (u(n) - 0.5).view(n, 1, 1, 1)
    v = 0.5 * u(n).view(n, 1, 1, 1) * on(0.4)
    x = x * (1 - v * (((yy - cy) ** 2 + (xx - cx) ** 2) / 2).clamp(max=1.5))
    # Exposure and gamma.
    gamma = torch.exp((u(n) - 0.5) * 0.7).view(n, 1, 1, 1)
    x = x.clamp(1e-4, 1) ** torch.where(on(0.5) > 0, gamma, torch.ones_like(gamma))
    x = x * torch.where(on(0.4) > 0, 0.75 + 0.5 * u(n, 1, 1, 1), torch.ones(n, 1, 1, 1))
    # Few grey levels: the picture's range squeezed to 40-150 levels somewhere in 0-255.
    lo = x.flatten(1).min(1).values.view(n, 1, 1, 1)
    hi = x.flatten(1).max(1).values.view(n, 1, 1, 1)
    span = (40 + 110 * u(n, 1, 1, 1)) / 255
    base = (1 - span) * u(n, 1, 1, 1)
    squeezed = base + (x - lo) / (hi - lo + 1e-6) * span
    x = torch.where(on(0.3) > 0, squeezed, x)
    # Grey pictures.
    grey = x.mean(1, keepdim=True).expand_as(x)
    x = torch.where(on(0.1) > 0, grey, x)
    # Sensor noise, then 8 bits.
    pick = torch.nonzero(u(n) < 0.5).flatten()
    if len(pick):
        x[pick] += torch.randn((len(pick), *x.shape[1:]), generator=gen) * (0.04 * u(len(pick), 1, 1, 1))
    return (x.clamp(0, 1) * 255).round() / 255


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of Nx3xHxW, separable, edges repeated."""
    r = int(math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


# -- targets ----------------------------------------------------------------------------------

def targets(cells_list, ignore_list, size: int, red_maps=None):
    """CenterNet targets on the stride-4 grid for a batch: heat (N x G x G), weight (N x G x G:
    0 where unsure), the centre pixels' (batch, y, x) with (log r, dy, dx), and the log red-cell
    diameter (N x G x G, nan where unknown)."""
    g = size // STRIDE
    n = len(cells_list)
    heat = np.zeros((n, g, g), np.float32)
    weight = np.ones((n, g, g), np.float32)
    where, what = [], []
    gy, gx = np.mgrid[0:g, 0:g]
    for b, (cells, ignore) in enumerate(zip(cells_list, ignore_list)):
        for cx, cy, r in cells:
            fx, fy = (cx + 0.5) / STRIDE - 0.5, (cy + 0.5) / STRIDE - 0.5
            ix, iy = int(round(fx)), int(round(fy))
            if not (0 <= ix < g and 0 <= iy < g):
                if np.hypot(np.clip(cx, 0, size - 1) - cx, np.clip(cy, 0, size - 1) - cy) < r:
                    weight[b][np.hypot(gx - fx, gy - fy) < 0.6 * r / STRIDE] = 0
                continue
            sigma = max(0.7, 0.25 * r / STRIDE)
            heat[b] = np.maximum(heat[b], np.exp(-((gx - fx) ** 2 + (gy - fy) ** 2) / (2 * sigma ** 2)))
            heat[b, iy, ix] = 1.0
            where.append((b, iy, ix))
            what.append((math.log(max(r, 1.0)), fy - iy, fx - ix))
        for cx, cy, r in ignore:
            fx, fy = (cx + 0.5) / STRIDE - 0.5, (cy + 0.5) / STRIDE - 0.5
            weight[b][np.hypot(gx - fx, gy - fy) < max(1.5, 0.6 * r / STRIDE)] = 0
    weight[heat == 1.0] = 1.0
    red = np.full((n, g, g), np.nan, np.float32)
    for b, m in enumerate(red_maps if red_maps is not None else []):
        red[b] = np.log(np.repeat(np.repeat(m, g // m.shape[0], 0), g // m.shape[1], 1))
    return (torch.from_numpy(heat), torch.from_numpy(weight),
            torch.tensor(where, dtype=torch.long).reshape(-1, 3), torch.tensor(what, dtype=torch.float32).reshape(-1, 3),
            torch.from_numpy(red))


def focal_loss(logits: torch.Tensor, heat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, per positive."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p ** 2 * (1 - heat) ** 4 * (1 - pos) * weight
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def finder_loss(logits, size, scale, heat, weight, where, what, red) -> torch.Tensor:
    """Focal loss on the heat, L1 on each cell's log radius and offset, L1 on the log red-cell
    diameter wherever it is known."""
    loss = focal_loss(logits[:, 0], heat, weight)
    if len(where):
        pred = size[where[:, 0], :, where[:, 1], where[:, 2]]
        loss = loss + F.l1_loss(pred[:, 0], what[:, 0]) + F.l1_loss(pred[:, 1:], what[:, 1:])
    known = ~torch.isnan(red)
    if known.any():
        loss = loss + F.l1_loss(scale[:, 0][known], red[known])
    return loss


def make_batch(rng, gen, sources, cfg: FinderTrainConfig):
    canvases, cells, ignore, reds = [], [], [], []
    for _ in range(cfg.batch_size):
        c, ce, ig, red = make_canvas(rng, sources, cfg.canvas, cfg.mosaic, cfg.field_share)
        # Flips and quarter turns, targets along.
        s = cfg.canvas - 1
        if rng.random() < 0.5:
            c, red = c[:, ::-1], red[:, ::-1]
            ce, ig = (np.column_stack([s - a[:, 0], a[:, 1], a[:, 2]]) if len(a) else a for a in (ce, ig))
        if rng.random() < 0.5:
            c, red = c.transpose(1, 0, 2), red.T
            ce, ig = (a[:, [1, 0, 2]] if len(a) else a for a in (ce, ig))
        canvases.append(np.ascontiguousarray(c))
        cells.append(ce)
        ignore.append(ig)
        reds.append(red)
    x = torch.from_numpy(np.stack(canvases)).permute(0, 3, 1, 2).div_(255)
    x = degrade(x, gen)
    # JPEG on a share of the pictures (PIL, per picture).
    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i in range(len(arr)):
        if rng.random() < 0.3:
            arr[i] = _jpeg(arr[i], int(rng.integers(25, 90)))
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255)
    return x, targets(cells, ignore, cfg.canvas, reds)


def _prefetch(make, n: int, depth: int = 2):
    """The batches of `make()` made n times in a thread, `depth` ahead: canvases are made in PIL
    and numpy, which let go of the GIL, while torch trains.
    One thread makes them in order, so a seed gives the same batches."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def work():
        try:
            for _ in range(n):
                if stop.is_set():
                    return
                q.put(make())
        except BaseException as e:  # handed to the trainer, which raises it
            q.put(e)

    threading.Thread(target=work, daemon=True).start()
    try:
        for _ in range(n):
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def fit(sources: list[Source], cfg: FinderTrainConfig, out, progress: bool = True, log=print,
        start: Path | None = None) -> Path:
    """Train a finder on `sources` and save it as `out`.safetensors/.json. Returns the weights' path.
    `start`: a finder's weights to start from (its JSON's settings are kept), for teaching a lab."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    base = None
    if start is not None:
        from ..cells.finder.net import read_finder_config
        from ..core.weights import load_tensors

        base = read_finder_config(start)
        cfg.widths, cfg.neck = tuple(base.widths), base.neck
    net = FinderNet(tuple(cfg.widths), cfg.neck)
    if start is not None:
        net.load_state_dict(load_tensors(Path(start).with_suffix(".safetensors")))
    opt = make_optimizer([net], cfg.lr, cfg.weight_decay, decay_everything=True)
    schedule = Schedule(0, cfg.steps, max(1, cfg.steps // 20), cfg.lr, ramp_over_cosine=True)
    net.train()
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc="finder", unit="step", disable=not progress)
    avg = None
    batches = _prefetch(lambda: make_batch(rng, gen, sources, cfg), cfg.steps)
    for step in bar:
        schedule.apply(opt, step)
        x, (heat, weight, where, what, red) = next(batches)
        logits, size, scale = net(x)
        loss = finder_loss(logits, size, scale, heat, weight, where, what, red)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        bar.set_postfix(loss=f"{avg:.3f}")
        if (step + 1) % max(1, cfg.steps // 10) == 0 and not progress:
            log(f"step {step + 1}/{cfg.steps} loss {avg:.3f} ({time.time() - t0:.0f} s)")
    net.eval()
    labs = {s.lab for s in sources}
    extra = {"train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
             "wall_s": round(time.time() - t0, 1)}
    if base is None:
        config = FinderConfig(widths=tuple(cfg.widths), neck=cfg.neck, name=Path(out).name,
                              trained_on=tuple(sorted(labs)), extra=extra)
    else:
        config = replace(base, name=Path(out).name, trained_on=tuple(sorted(labs | set(base.trained_on))),
                         extra={**extra, "adapted_from": base.name, "parent": base.extra})
    return save_finder(net, config, out)
