"""The learned cell finder: a small fully convolutional network that marks white cells.

CenterNet's idea at a small size: for a picture of any size it predicts, on a grid of stride 4,
a heatmap that peaks at each white cell's centre, the cell's radius there, and the sub-cell
offset of the centre. Peaks of the heatmap are cells; a greedy suppression removes a cell found
twice.

Why a network: the threshold finder (cells/classic.py) learnt its thresholds from the
three labs we can see, and on a pale lab it never saw (nucleus contrast a fifth of Raabin-WBC's)
it found 4 of 508 white cells. This network sees every picture through `normalise` (optical
density, centred and scaled per picture), so a pale picture is stretched to the contrast of a
dark one before the first layer, and it was trained on pictures degraded well past the labs we
have (training/finder.py).

Scale: the network was trained on cells 14 to 110 working pixels across. It reads a field's
scale itself: a fourth head predicts, everywhere on the grid, how many working pixels the red
cells there are across (trained on the red-cell boxes of BCCD and BCD and on each home lab's
measured red cells). `Finder.search_field` looks at a working copy, reads the median of that
map, rescales the field so its red cells are `rbc_work` pixels across (white cells then ~30-60)
and looks again, up to `scale_passes` times (a field at 0.25x or 4x needs two looks). No
threshold ruler decides the scale any more: the one in cells/classic.py read 36 px for
red cells of 85 on a pale, unevenly lit lab, and the finder then fired on red-cell rims.
A single-cell picture, framed in its plasma, goes to a long side of `cell_side` (a Raabin-WBC
cell is then ~25 px, a tight crop's ~65).

Light: before the first layer, `normalise` also evens the light. In optical density the plasma
is near zero wherever the lamp is bright; under vignetting or a lamp off-centre it is not. The
palest value within `FLAT_WINDOW` working pixels (wider than any cell the network is shown at the
working scale) is taken as the local background and subtracted: a flat-field correction, the
standard answer to uneven illumination, done per picture with no calibration slide.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ...core.errors import WbcnetError
from ...core.weights import load_tensors, save_tensors, sha256_file
from ..cellbox import CellBox, FieldSearch, plasma_colour
from .paths import SHIPPED

STRIDE = 4
# The flat-field window, in working pixels: wider than a white cell at the working scale (30-60)
# and than most of the training range, narrow enough to follow a vignette across a field.
FLAT_WINDOW = 132


@dataclass(frozen=True)
class FinderConfig:
    """What a finder's weights need to be used: the network's widths and how pictures reach it.
    Saved as the JSON beside the weights."""

    widths: tuple[int, ...] = (16, 32, 48, 64, 96)
    neck: int = 32
    # Longest side of the working copy of a whole field, and of a single-cell picture.
    field_side: int = 320
    cell_side: int = 96
    cell_margin: float = 0.2
    # A field's red cells are made this many working pixels across (see Finder.search_field): the
    # middle of the trained range of white cells (14-110 px, geometric middle 39) is ~1.5 red cells.
    rbc_work: float = 26.0
    # The first look at a field is at this long side (never enlarged); up to `scale_passes` looks
    # in all, each at the scale the one before it read.
    coarse_side: int = 384
    scale_passes: int = 3
    # Candidates between `reject_floor` and `threshold` are kept as "looked at and not a white
    # cell": count reports them apart so a person can check them.
    reject_floor: float = 0.1
    # A heatmap peak above this is a cell (fields); the single-cell pass takes the best peak
    # near the middle above `cell_threshold`.
    threshold: float = 0.3
    cell_threshold: float = 0.1
    name: str = "finder"
    trained_on: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "FinderConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("widths", "trained_on"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def even_light(od: torch.Tensor) -> torch.Tensor:
    """Optical density less its local background: the palest value (box-averaged over 4 x 4
    pixels against noise) within FLAT_WINDOW pixels, smoothed, subtracted."""
    h, w = od.shape[-2:]
    small = F.avg_pool2d(od, STRIDE, STRIDE, ceil_mode=True)
    k = (FLAT_WINDOW // STRIDE) | 1
    # A square window's min and mean are each a column pass then a row pass: the same numbers as
    # the k x k pools, at 44 ms -> a few ms a 640 x 480 field here. The min by doubling
    # (_running_min), not max_pool2d's k comparisons an output: the same numbers, 36 -> 0.8 ms on
    # a 1280 x 960 field's map, 0.07 -> 0.015 ms a 96 px single-cell picture.
    bg = _running_min(_running_min(small, k, 2), k, 3)
    bg = F.avg_pool2d(F.avg_pool2d(bg, (k, 1), 1, (k // 2, 0), count_include_pad=False), (1, k), 1, (0, k // 2),
                      count_include_pad=False)
    return od - F.interpolate(bg, size=(h, w), mode="bilinear", align_corners=False)


def _running_min(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """The min over a centred window of `k` (odd) along `dim`, the window cut where `x` ends: what
    -max_pool of -x with padding k // 2 gives (a min is the same number in any order). Spans of
    1, 2, 4, ... are folded together, then the window is two overlapping spans."""
    n, half = x.shape[dim], k // 2
    y = F.pad(x, [0, 0] * (x.dim() - 1 - dim) + [half, half], value=float("inf"))
    span = 1
    while span * 2 <= k:
        y = torch.minimum(y.narrow(dim, 0, y.shape[dim] - span), y.narrow(dim, span, y.shape[dim] - span))
        span *= 2
    return torch.minimum(y.narrow(dim, 0, n), y.narrow(dim, k - span, n))


def normalise(rgb: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW float RGB in [0, 1] -> optical density, light evened (`even_light`), per picture
    centred on each channel's mean and scaled by its overall spread: a pale lab's picture and a
    dark one's, an evenly lit one and a vignetted one, arrive alike. Computed in NCHW whatever
    `rgb`'s layout: on a channels-last batch (what Finder._run hands the network) the pools, the
    upsampling and the reductions took 0.63-0.86 ms a 96 px picture in batches of 32, against
    0.45-0.59 in NCHW. The numbers differ from channels-last ones in the 7th digit (the means'
    and the spread's sums run in another order)."""
    od = even_light(-torch.log(rgb.contiguous().clamp(min=0) + 1 / 256))
    od = od - od.mean(dim=(2, 3), keepdim=True)
    return od / (od.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 0.02)


class FinderNet(nn.Module):
    """Five stride-2 stages (16 to 96 channels), a top-down neck back to stride 4, four heads:
    white-cell heat, its size and offset, and the red cells' size (the field's scale)."""

    def __init__(self, widths=(16, 32, 48, 64, 96), neck: int = 32):
        super().__init__()
        chans = [3, *widths]
        self.stages = nn.ModuleList()
        for i in range(len(widths)):
            layers = [_conv(chans[i], chans[i + 1], 2)]
            if i > 0:
                layers.append(_conv(chans[i + 1], chans[i + 1]))
            self.stages.append(nn.Sequential(*layers))
        # Lateral 1x1s from stride 4 up: the top-down sum brings the deep stages' field of view
        # (~200 px, a large cell's context) down to the fine grid.
        self.lateral = nn.ModuleList(nn.Conv2d(w, neck, 1) for w in widths[1:])
        self.smooth = _conv(neck, neck)
        self.heat = nn.Sequential(_conv(neck, neck), nn.Conv2d(neck, 1, 1))
        self.size = nn.Sequential(_conv(neck, neck), nn.Conv2d(neck, 3, 1))  # log radius, dy, dx
        self.scale = nn.Sequential(_conv(neck, neck), nn.Conv2d(neck, 1, 1))  # log red-cell diameter
        nn.init.constant_(self.scale[-1].bias, math.log(26.0))
        nn.init.constant_(self.heat[-1].bias, -2.2)  # a prior of ~0.1: focal loss starts calm

    def forward(self, rgb: torch.Tensor, scale: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """rgb: Nx3xHxW in [0, 1] (H, W multiples of 32 best). Returns heat logits Nx1xH/4xW/4,
        Nx3xH/4xW/4 (log radius in working pixels, centre offset in grid cells) and Nx1xH/4xW/4
        (log diameter of the red cells there, working pixels); None for the last with `scale` False
        (find_central does not read it; its head is a seventh of the network's arithmetic)."""
        x = normalise(rgb)
        if rgb.is_contiguous(memory_format=torch.channels_last) and not rgb.is_contiguous():
            # The convolutions in the caller's layout: channels-last, oneDNN's convolutions took
            # 0.83 ms a 96 px picture in batches of 32, against 1.25 in NCHW (reorders to and fro).
            # (normalise works in NCHW: see there.)
            x = x.contiguous(memory_format=torch.channels_last)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        top = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[1:-1])):
            top = lat(f) + F.interpolate(top, size=f.shape[-2:], mode="nearest")
        top = self.smooth(top)
        return self.heat(top), self.size(top), (self.scale(top) if scale else None)


@dataclass(frozen=True)
class Found:
    """One white cell found in a working copy (working pixels) with its heatmap score."""

    cx: float
    cy: float
    radius: float
    score: float


def decode(heat_logits: torch.Tensor, size: torch.Tensor, threshold: float, max_cells: int = 100) -> list[list[Found]]:
    """Peaks of each picture's heatmap above `threshold` -> cells (working pixels), duplicates
    (a weaker peak whose centre lies inside a stronger cell's circle) removed."""
    heat = torch.sigmoid(heat_logits)
    peaks = (heat == F.max_pool2d(heat, 3, 1, 1)) & (heat > threshold)
    out = []
    for i in range(heat.shape[0]):
        ys, xs = torch.nonzero(peaks[i, 0], as_tuple=True)
        if ys.numel() == 0:
            out.append([])
            continue
        scores = heat[i, 0, ys, xs]
        r = torch.exp(size[i, 0, ys, xs])
        cy = (ys.float() + 0.5 + size[i, 1, ys, xs]) * STRIDE - 0.5
        cx = (xs.float() + 0.5 + size[i, 2, ys, xs]) * STRIDE - 0.5
        keep = _suppress(cx, cy, r, scores)[:max_cells]
        out.append([Found(float(cx[k]), float(cy[k]), float(r[k]), float(scores[k])) for k in keep])
    return out


# A peak is the same cell as a stronger one when its centre lies within this many radii (the larger
# of the two) of it. Two white cells that touch have their centres r1 + r2 apart; the lobes of one
# segmented neutrophil, which the finder can take for small cells of their own (BCCD's and BCD's
# fields), lie within one radius of the whole cell's centre. 0.7 left those lobes as extra cells.
SAME_CELL = 1.0


def _suppress(cx, cy, r, scores) -> list[int]:
    """Greedy non-maximum suppression of circles: strongest first, a peak is dropped when its
    centre lies within SAME_CELL radii of a kept cell's. (torchvision.ops.nms would do it for boxes,
    but importing torchvision costs 2.6 s of start-up here, more than a whole one-file predict.)"""
    order = torch.argsort(scores, descending=True).tolist()
    kept: list[int] = []
    for i in order:
        if all(float(torch.hypot(cx[i] - cx[j], cy[i] - cy[j])) > SAME_CELL * max(float(r[j]), float(r[i])) for j in kept):
            kept.append(i)
    return kept


class Finder:
    """A trained FinderNet with its config: finds cells in numpy pictures of any size.

    Working copies are made with PIL's box reduce (a whole factor) and then a resize to a
    multiple of 32, so a picture's cells arrive at the scale the network was trained on.
    """

    def __init__(self, net: FinderNet, config: FinderConfig, sha256: str = ""):
        self.net = net.eval()
        self.config = config
        self.sha256 = sha256

    # -- pictures to working copies ----------------------------------------------------------

    @staticmethod
    def working_copy(rgb: np.ndarray, side: int, enlarge: bool = False) -> tuple[np.ndarray, float, float]:
        """`rgb` brought to a long side of `side` (reduced only, unless `enlarge`), then to a
        multiple of 32 a side.
        Returns (copy, scale_y, scale_x): original pixels per working pixel."""
        _check_rgb(rgb)
        return Finder._working_image(Image.fromarray(np.ascontiguousarray(rgb)), side, enlarge)

    @staticmethod
    def _working_image(img: Image.Image, side: int, enlarge: bool = False) -> tuple[np.ndarray, float, float]:
        """`working_copy` of an RGB PIL image."""
        w, h = img.size
        scale = side / max(h, w) if enlarge else min(1.0, side / max(h, w))
        th, tw = max(32, int(round(h * scale / 32)) * 32), max(32, int(round(w * scale / 32)) * 32)
        factor = int(min(h / th, w / tw))
        if factor >= 2:
            img = img.reduce(factor)  # box average first: far cheaper than a big Lanczos kernel
        if img.size != (tw, th):
            img = img.resize((tw, th), Image.Resampling.BILINEAR)
        return np.asarray(img), h / th, w / tw

    @torch.inference_mode()
    def _run(self, batch: np.ndarray, threshold: float, max_cells: int = 100,
             scale: bool = True) -> tuple[list[list[Found]], torch.Tensor | None]:
        """Cells above `threshold` in each working copy, and each copy's map of log red-cell
        diameters (None without `scale`)."""
        x = torch.from_numpy(np.array(batch)).permute(0, 3, 1, 2).float().div_(255)
        # One thread: the network is small, and it is called from decode threads and processes
        # that share the cores; torch's threads in each (OpenMP's setting is per calling thread)
        # made it 10x slower on a busy 2-core machine (44 pictures/s with one thread, 4 with two).
        n = torch.get_num_threads()
        if n != 1:
            torch.set_num_threads(1)
        try:
            heat, size, red = self.net(x, scale)
        finally:
            if n != 1:
                torch.set_num_threads(n)
        return decode(heat, size, threshold, max_cells), (red[:, 0] if scale else None)

    # -- the two questions wbcnet asks -------------------------------------------------------

    def search_field(self, rgb: np.ndarray, threshold: float | None = None) -> FieldSearch:
        """Every white cell in a whole field, in `rgb`'s pixels, best first; the candidates it
        judged not to be white cells; and the scale it read.

        The network reads the field's scale from its red cells (the scale head's median over the
        working copy) and the field is looked at again with its red cells `rbc_work` working
        pixels across (white cells then ~30-60), until a look agrees with the scale it was made
        at (within 25%) or `scale_passes` looks are spent. A working copy may be enlarged up to
        twice the field: a low magnification's small cells then reach the size the network knows.
        """
        c = self.config
        threshold = c.threshold if threshold is None else threshold
        h, w = rgb.shape[:2]
        long = max(h, w)
        side = min(long, c.coarse_side)
        for look in range(1, c.scale_passes + 1):
            small, sy, sx = self.working_copy(rgb, int(round(side)), enlarge=True)
            found, scale = self._run(small[None], min(threshold, c.reject_floor), max_cells=200)
            logd = scale[0].flatten()
            q1, med, q3 = (float(v) for v in torch.quantile(logd, torch.tensor([0.25, 0.5, 0.75])))
            rbc = math.exp(med) * (sy + sx) / 2                    # red-cell diameter, field pixels
            made_at = long / ((sy + sx) / 2)                        # the long side this look had
            want = min(max(long * c.rbc_work / rbc, 64.0), 2.0 * long, 4.0 * c.field_side)
            settled = abs(math.log(want / made_at)) < math.log(1.25)
            if settled:
                break
            side = want
        cells = [_in_picture(f, sy, sx) for f in found[0] if f.score >= threshold]
        rejected = [_in_picture(f, sy, sx) for f in found[0] if f.score < threshold]
        return FieldSearch(cells, rejected, rbc, q3 - q1, look, settled)

    def find_cells(self, rgb: np.ndarray, threshold: float | None = None) -> list[CellBox]:
        """Every white cell in a whole field, in `rgb`'s pixels, best first (`search_field`'s cells)."""
        return self.search_field(rgb, threshold).cells

    def find_central(self, pictures: list[np.ndarray]) -> list[CellBox | None]:
        """The white cell nearest the middle of each single-cell picture, or None where no peak
        passes `cell_threshold`. Pictures whose working copies are of one size (all pictures of
        one size are) are run as one batch: callers hand a batch of pictures at once.

        Each picture gets a rim of its own plasma colour, `cell_margin` of its side all round,
        before it is reduced: a lab's tight crop whose cell fills it (BCCD's) then shows the cell
        whole, with plasma around it, at a size the network was trained on.

        Why batches: a 575 px Raabin-WBC picture's model input (decoded at 288) took ~8 ms on one
        thread, of which the network's forward pass ~4.6 (2.9 at best); in batches of 32 the
        forward is 1.2 ms a picture at best (one picture's small convolutions take torch's slow
        path, a batch's oneDNN's). A batch's numbers differ from one picture's in the 6th or 7th
        digit (the two sum in other orders): a cell's centre and radius move by up to ~5e-5 px,
        and 1,500 pictures' crops were the same pixels (issue 30).
        """
        out: list = [None] * len(pictures)
        groups: dict[tuple, list[int]] = {}
        smalls = []
        for i, rgb in enumerate(pictures):
            _check_rgb(rgb)
            h, w = rgb.shape[:2]
            m = int(round(self.config.cell_margin * max(h, w)))
            # The frame drawn and the picture pasted by PIL: the same pixels as numpy's broadcast
            # fill and copy, which took 1 ms of a 404 px frame's ~1.1 (0.1 here).
            framed = Image.new("RGB", (w + 2 * m, h + 2 * m), tuple(int(v) for v in plasma_colour(rgb)))
            framed.paste(Image.fromarray(np.ascontiguousarray(rgb)), (m, m))
            small, sy, sx = self._working_image(framed, self.config.cell_side)
            smalls.append((small, sy, sx, m))
            groups.setdefault(small.shape, []).append(i)
        for idx in groups.values():
            found, _ = self._run(np.stack([smalls[i][0] for i in idx]), self.config.cell_threshold, scale=False)
            for i, cells in zip(idx, found):
                small, sy, sx, m = smalls[i]
                best = _central(cells, small.shape[0], small.shape[1])
                if best is not None:
                    out[i] = _in_picture(best, sy, sx, offset=m)
        return out


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}")


def _in_picture(f: Found, sy: float, sx: float, offset: int = 0) -> CellBox:
    """A cell found in a working copy, in the pixels of the picture it was made from (working
    pixel i covers original pixels [i * s, (i + 1) * s)), less the frame `offset` added around it."""
    return CellBox((f.cx + 0.5) * sx - 0.5 - offset, (f.cy + 0.5) * sy - 0.5 - offset, f.radius * (sy + sx) / 2, f.score)


def _central(cells: list[Found], h: int, w: int) -> Found | None:
    """The cell a single-cell picture is of: a confident cell near the middle beats a stronger
    neighbour cut by the edge. Score weighted by a wide Gaussian of distance from the middle."""
    if not cells:
        return None
    spread = 2 * (0.35 * max(h, w)) ** 2

    def weight(f: Found) -> float:
        return f.score * np.exp(-((f.cx - (w - 1) / 2) ** 2 + (f.cy - (h - 1) / 2) ** 2) / spread)

    return max(cells, key=weight)


# -- weights on disk ---------------------------------------------------------------------------

def save_finder(net: FinderNet, config: FinderConfig, stem) -> Path:
    """`stem`.safetensors + `stem`.json (config and the weights' SHA-256), each written atomically,
    the JSON last, so a half-written finder is never taken for a whole one."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights, meta = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tmp = weights.with_name(weights.name + ".tmp")
    save_tensors(net.state_dict(), tmp)
    tmp.replace(weights)
    doc = {"kind": "wbcnet-finder", **asdict(config), "weights_sha256": sha256_file(weights)}
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(meta)
    return weights


def read_finder_config(path=None) -> FinderConfig:
    """The settings of the finder at `path` (.safetensors or its .json; default: the shipped one),
    after checking that its weights are the ones its JSON describes."""
    return _checked(path)[0]


def _checked(path=None) -> tuple[FinderConfig, str]:
    """(settings, weights' SHA-256) of the finder at `path`, once the two are checked to belong together."""
    path = Path(path) if path is not None else SHIPPED
    weights, meta = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for p in (weights, meta):
        if not p.is_file():
            raise WbcnetError(f"{p}: finder file not found")
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise WbcnetError(f"{meta}: not a readable finder JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "wbcnet-finder" or "weights_sha256" not in doc:
        raise WbcnetError(f"{meta}: not a wbcnet finder description (kind and weights_sha256 needed)")
    sha = sha256_file(weights)
    if sha != doc["weights_sha256"]:
        raise WbcnetError(f"{weights}: weights do not match the SHA-256 in {meta.name} (damaged or replaced)")
    return FinderConfig.from_dict(doc), sha


def load_finder(path=None) -> Finder:
    """A finder from `path` (.safetensors or its .json; default: the one shipped in the package).
    The weights' SHA-256 must match the JSON's."""
    path = Path(path) if path is not None else SHIPPED
    weights = path.with_suffix(".safetensors")
    config, sha = _checked(path)
    net = FinderNet(config.widths, config.neck)
    try:
        net.load_state_dict(load_tensors(weights))
    except RuntimeError as e:
        raise WbcnetError(f"{weights}: weights do not fit the finder network ({str(e).splitlines()[0]})") from None
    return Finder(_fused(net.eval()), config, sha)


def _fused(net: FinderNet) -> FinderNet:
    """Each convolution with its BatchNorm folded in, for inference: a third fewer calls on
    pictures this small, where the call, not the arithmetic, is the cost."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in net.modules():
        if isinstance(module, nn.Sequential) and len(module) == 3 and isinstance(module[1], nn.BatchNorm2d):
            module[0] = fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    return net
