"""Batched augmentation on uint8 tensors, on whatever device the batch is on.

One affine warp per image does the reference project's Keras ImageDataGenerator set (rotation
+-30 deg, width/height shift 0.2, shear 0.25, zoom 0.2, horizontal flip, bilinear sampling, nearest fill) plus a
vertical flip and 90-degree turns, since a cell on a slide has no up. A mild colour jitter
(brightness, contrast, saturation, hue, per-channel gain) stands in for stain and camera
differences, and keeps a model from learning one class's colour instead of its shape.

For cells from other labs (issue 8) there are more, each off by default so that an existing config
draws the same random numbers and gives the same batches as before: HED stain jitter (Tellez et
al. 2018/2019), Gaussian blur, a lower camera resolution and JPEG re-compression.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from .augment_config import AugmentConfig  # noqa: F401 (the strengths; imported from here too)


def _uniform(n, bound, g, device):
    return (torch.rand(n, generator=g, device=device) * 2 - 1) * bound


def affine_matrices(n: int, cfg: AugmentConfig, g: torch.Generator, device="cpu") -> torch.Tensor:
    """(n, 2, 3) matrices for `F.affine_grid` (output -> input coordinates, in [-1, 1] units)."""
    angle = _uniform(n, math.radians(cfg.rotation), g, device)
    if cfg.rot90:
        angle = angle + torch.randint(0, 4, (n,), generator=g, device=device) * (math.pi / 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear = torch.eye(2, device=device).repeat(n, 1, 1)
    shear[:, 0, 1] = _uniform(n, cfg.shear, g, device)
    zx = 1 + _uniform(n, cfg.zoom, g, device)
    zy = 1 + _uniform(n, cfg.zoom, g, device)
    flip_x = torch.where(torch.rand(n, generator=g, device=device) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n, device=device)
    flip_y = torch.where(torch.rand(n, generator=g, device=device) < 0.5, -1.0, 1.0) if cfg.vflip else torch.ones(n, device=device)
    if cfg.magnify > 1:
        mag = torch.exp(torch.rand(n, generator=g, device=device) * math.log(cfg.magnify))
        mag = torch.where(torch.rand(n, generator=g, device=device) < 0.5, mag, torch.ones_like(mag))
        zx, zy = zx / mag, zy / mag
    scale = torch.diag_embed(torch.stack([zx * flip_x, zy * flip_y], -1))
    linear = rot @ shear @ scale
    shift = _uniform(2 * n, cfg.shift * 2, g, device).view(n, 2)  # [-1, 1] spans the side: 0.2 -> 0.4
    return torch.cat([linear, shift.unsqueeze(-1)], -1)


def _grayscale(x):
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _rotate_hue(x, turn):
    """Rotate hue by `turn` (fraction of 2 pi) about the grey axis: a cheap, batched hue shift."""
    theta = turn * 2 * math.pi
    cos, sin = torch.cos(theta), torch.sin(theta)
    k = 1 / math.sqrt(3)
    one_third = (1 - cos) / 3
    a = cos + one_third
    b = one_third - k * sin
    c = one_third + k * sin
    m = torch.stack([torch.stack([a, b, c], -1), torch.stack([c, a, b], -1), torch.stack([b, c, a], -1)], -2)
    return torch.einsum("nij,njhw->nihw", m, x)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    n, dev = x.shape[0], x.device
    shape = (n, 1, 1, 1)
    if cfg.channel_gain:
        x = x * (1 + _uniform(3 * n, cfg.channel_gain, g, dev).view(n, 3, 1, 1))
    if cfg.brightness:
        x = x * (1 + _uniform(n, cfg.brightness, g, dev).view(shape))
    if cfg.contrast:
        mean = _grayscale(x).mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * (1 + _uniform(n, cfg.contrast, g, dev).view(shape)) + mean
    if cfg.saturation:
        grey = _grayscale(x)
        x = (x - grey) * (1 + _uniform(n, cfg.saturation, g, dev).view(shape)) + grey
    if cfg.hue:
        x = _rotate_hue(x, _uniform(n, cfg.hue, g, dev))
    if cfg.grayscale:
        grey = (torch.rand(n, generator=g, device=dev) < cfg.grayscale).view(shape)
        x = torch.where(grey, _grayscale(x).expand_as(x), x)
    return x.clamp_(0, 1)


# Ruifrok & Johnston (2001) stain vectors, rows haematoxylin, eosin, DAB, exactly as
# skimage.color.rgb2hed has them: a pixel's optical density (OD) is its stain amounts @ _RGB_FROM_HED.
# White cells are Romanowsky-stained (May-Gruenwald-Giemsa, Wright), not H&E, but the H and E axes
# are still close to the purple nucleus and pink-orange cytoplasm/red-cell stains, so moving along
# them is a plausible stain change.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29],
                              [0.07, 0.99, 0.11],
                              [0.27, 0.57, 0.78]], dtype=torch.float64)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def _od(x: torch.Tensor) -> torch.Tensor:
    """Optical density, -ln((255 x + 1) / 256): Beer-Lambert with the +1 that keeps black finite
    (see `hed_jitter`). log1p is 15x slower on CPU."""
    return x.mul(255).add_(1).log_().sub_(math.log(256)).neg_()


def _from_od(od: torch.Tensor) -> torch.Tensor:
    """The colour of optical density `od`, in [0, 1]."""
    return od.neg().exp_().mul_(256).sub_(1).div_(255).clamp_(0, 1)


def hed_jitter(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    """Tellez et al.'s HED augmentation on float images in [0, 1]: s -> alpha * s + beta per stain.

    OD is -ln((255 x + 1) / 256), Beer-Lambert with the +1 that Macenko-style stain code uses: it
    keeps black pixels finite (OD <= ln 256) and makes the round trip exact for every colour, where
    skimage's clip of negative stain amounts would not. beta is in natural OD units, and b = sigma
    ties it to alpha: stained pixels have an OD near 1, so the stain-strength term (alpha) and the
    tint term (beta, which also tints the background) are about the same size. Between Raabin-WBC,
    PBC and BCCD the mean stain amounts of background and nucleus differ by 0.1-0.5 in these
    units, more than sigma = 0.05 reaches; 0.2 is strong but still looks like a stained cell.
    """
    n, dev = x.shape[0], x.device
    alpha = 1 + _uniform(3 * n, sigma, g, dev).view(n, 3)
    beta = _uniform(3 * n, sigma, g, dev).view(n, 1, 3)
    hed_from_rgb = _HED_FROM_RGB.to(device=dev, dtype=x.dtype)
    rgb_from_hed = _RGB_FROM_HED.to(device=dev, dtype=x.dtype)
    # od @ hed_from_rgb -> stains, * alpha + beta, @ rgb_from_hed -> od is one affine map of OD per
    # image: od @ m + c. Folding it into a 3x3 matrix makes it a single batched matmul.
    m = hed_from_rgb @ torch.diag_embed(alpha) @ rgb_from_hed   # (n, 3, 3)
    c = beta @ rgb_from_hed                                      # (n, 1, 3)
    od = torch.baddbmm(c.transpose(1, 2), m.transpose(1, 2), _od(x.flatten(2)))  # (n, 3, H W)
    return _from_od(od).view_as(x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur image i of `x` with its own `sigma[i]` (pixels): one separable, grouped convolution.
    Edges repeat, like the warp's fill, so a blurred image gains no dark frame."""
    n, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma.to(x.dtype).view(n, 1)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c, 2 radius + 1)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def random_blur(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Gaussian blur on a `cfg.blur` share of the images: a soft focus or a worse objective."""
    n, dev = x.shape[0], x.device
    chosen = (torch.rand(n, generator=g, device=dev) < cfg.blur).nonzero().squeeze(1)
    sigma = 0.3 + torch.rand(n, generator=g, device=dev) * (cfg.blur_sigma - 0.3)
    if chosen.numel() == 0:
        return x
    radius = math.ceil(3 * cfg.blur_sigma)
    return x.index_copy(0, chosen, gaussian_blur(x[chosen], sigma[chosen], radius))


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode one float (1, 3, H, W) CPU image as JPEG. Pillow rather than
    torchvision.io: the same libjpeg-turbo bytes (checked identical), 0.2 ms per 112 px image, and
    torchvision 0.29 deprecates its JPEG codec."""
    from PIL import Image

    q = x[0].mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    y = torch.from_numpy(np.array(Image.open(buf).convert("RGB")))
    return y.permute(2, 0, 1).unsqueeze(0).float().div_(255)


def low_res_and_jpeg(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """A lower-resolution camera and a lossy file: half the images shrink by a log-uniform factor
    in [1, cfg.downscale] and come back to size; a `cfg.jpeg` share are JPEG-compressed. The JPEG
    happens at the small size, as a camera would save it, so its 8x8 blocks grow with the
    enlargement just as a low-resolution lab's do when wbcnet resizes its images."""
    n, dev = x.shape[0], x.device
    h, w = x.shape[-2:]
    shrink = [False] * n
    compress = [False] * n
    if cfg.downscale > 1:
        shrink = (torch.rand(n, generator=g, device=dev) < 0.5).tolist()
        factor = torch.exp(torch.rand(n, generator=g, device=dev) * math.log(cfg.downscale)).tolist()
    if cfg.jpeg:
        compress = (torch.rand(n, generator=g, device=dev) < cfg.jpeg).tolist()
        quality = torch.randint(30, 91, (n,), generator=g, device=dev).tolist()
    chosen = [i for i in range(n) if shrink[i] or compress[i]]
    if not chosen:
        return x
    # Image by image, since sizes and qualities differ: about 0.2 ms an image for each of resize and
    # JPEG at 112 px. On the CPU, where the JPEG codec is: one transfer each way from an accelerator.
    sub = x[chosen].cpu()
    for j, i in enumerate(chosen):
        y = sub[j:j + 1]
        if shrink[i]:
            small = (max(4, round(h / factor[i])), max(4, round(w / factor[i])))
            # antialias: a camera's pixel integrates light over its area; plain bilinear would alias
            y = F.interpolate(y, size=small, mode="bilinear", antialias=True, align_corners=False)
        if compress[i]:
            y = _jpeg(y, quality[i])
        if shrink[i]:
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        sub[j] = y[0].clamp(0, 1)
    return x.index_copy(0, torch.tensor(chosen, device=dev), sub.to(dev))


# --- How labs really take pictures (issue 28) ------------------------------------------------
# Each stage acts on a share of the batch chosen with the run's generator `g`. Where kornia has the
# operation batched on tensors and it is as fast (filtering with per-image kernels, gamma, Planckian
# colour temperature) it does the work; kornia's random modules draw from
# torch's global generator, so they run inside `_seeded(g)`: a fork of it seeded from `g`, and a
# seed repeats its batches exactly, whatever else uses the global generator.

def _chosen(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=g, device=device) < p).nonzero().squeeze(1)


def _on(x: torch.Tensor, idx: torch.Tensor, fn) -> torch.Tensor:
    """`fn` applied to the images `idx` of `x` only (the rest are untouched, and cost nothing)."""
    return x if idx.numel() == 0 else x.index_copy(0, idx, fn(x[idx]).to(x.dtype))


@contextlib.contextmanager
def _seeded(g: torch.Generator):
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=g, device=g.device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def disc_kernels(radius: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size, size) normalised pillbox kernels of the given radii (pixels): the point spread of
    an out-of-focus lens, which a Gaussian is not (its hard edge rings the nucleus's outline). Edge
    pixels are weighted by how much of them the disc covers (4x4 supersampling)."""
    t = (torch.arange(size * 4, dtype=torch.float32, device=radius.device) + 0.5) / 4 - size / 2
    d = torch.sqrt(t.view(-1, 1) ** 2 + t.view(1, -1) ** 2)
    inside = (d.unsqueeze(0) <= radius.float().view(-1, 1, 1)).float()
    k = F.avg_pool2d(inside.unsqueeze(1), 4).squeeze(1)
    return k / k.sum(dim=(1, 2), keepdim=True)


def defocus(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    import kornia.filters as KF

    n, dev = x.shape[0], x.device
    idx = _chosen(n, cfg.defocus, g, dev)
    radius = 0.5 + torch.rand(n, generator=g, device=dev) * (cfg.defocus_radius - 0.5)
    size = 2 * math.ceil(cfg.defocus_radius) + 1
    return _on(x, idx, lambda y: KF.filter2d(y, disc_kernels(radius[idx], size).to(y), border_type="replicate"))


def fade(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """A pale slide: every pixel's optical density times k, log-uniform in [pale_min, 1]. At k = 0.2
    the nucleus keeps a fifth of its contrast against the background, as the blurred lab's does."""
    n, dev = x.shape[0], x.device
    idx = _chosen(n, cfg.pale, g, dev)
    k = torch.exp(torch.rand(n, generator=g, device=dev) * math.log(cfg.pale_min))
    return _on(x, idx, lambda y: _from_od(_od(y) * k[idx].view(-1, 1, 1, 1)))


def tint(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """A coloured filter over the whole picture (a lamp, a yellowed mountant): each channel's
    optical density raised by up to `tint_od`, independently, so casts of every hue come up; blue
    alone absorbed is a yellow background."""
    n, dev = x.shape[0], x.device
    idx = _chosen(n, cfg.tint, g, dev)
    od = torch.rand(n, 3, generator=g, device=dev) * cfg.tint_od
    return _on(x, idx, lambda y: _from_od(_od(y) + od[idx].view(-1, 3, 1, 1)))


# kornia's blackbody table runs from about 3,000 K to 15,000 K; its first rows take away nearly all
# the blue (b = 0.003 at the first), which no lamp does to a cell's picture: from row 3 on.
_PLANCK_ROWS = list(range(3, 25))


@functools.lru_cache(maxsize=None)
def _planckian(p: float):
    """kornia's jitter for probability `p`, built once (it builds its table of lamp colours)."""
    import kornia.augmentation as K

    return K.RandomPlanckianJitter(mode="blackbody", select_from=_PLANCK_ROWS, p=p)


def temperature(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    with _seeded(g):
        return _planckian(cfg.temperature)(x)


def camera_gamma(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    import kornia.enhance as KE

    n, dev = x.shape[0], x.device
    idx = _chosen(n, cfg.gamma, g, dev)
    gamma = torch.exp((torch.rand(n, generator=g, device=dev) * 2 - 1) * math.log(2))
    return _on(x, idx, lambda y: KE.adjust_gamma(y.clamp(0, 1), gamma[idx].to(y)))


def uneven_light(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Light that falls off across the field and a lamp's bright or dark spot: the picture times
    1 + a gradient (up to +-30% corner to corner) + a Gaussian spot (+-5-30%, sigma 0.3-1 of the
    half-side). Multiplied, since the light passes through the slide. Hand-written: kornia's
    RandomLinearIllumination + RandomGaussianIllumination did the same (added, not multiplied)
    at 25 ms a batch of 64 for a fifth of it, this at 3 ms."""
    n, dev = x.shape[0], x.device
    idx = _chosen(n, cfg.uneven_light, g, dev)
    r = torch.rand(n, 7, generator=g, device=dev)
    if idx.numel() == 0:
        return x
    r = r[idx]
    h, w = x.shape[-2:]
    v = torch.linspace(-1, 1, h, device=dev).view(1, h, 1)
    u = torch.linspace(-1, 1, w, device=dev).view(1, 1, w)
    angle = r[:, 0].view(-1, 1, 1) * 2 * math.pi
    slope = (0.025 + r[:, 1] * 0.125).view(-1, 1, 1)           # 0.05-0.3 corner to corner
    cx, cy = (r[:, 2] * 1.6 - 0.8).view(-1, 1, 1), (r[:, 3] * 1.6 - 0.8).view(-1, 1, 1)
    sigma = (0.3 + r[:, 4] * 0.7).view(-1, 1, 1)
    gain = ((0.05 + r[:, 5] * 0.25) * torch.where(r[:, 6] < 0.5, -1.0, 1.0)).view(-1, 1, 1)
    field = 1 + slope * (torch.cos(angle) * u + torch.sin(angle) * v) \
        + gain * torch.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * sigma ** 2))
    return _on(x, idx, lambda y: (y * field.unsqueeze(1).to(y)).clamp_(0, 1))


def sensor_noise(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    n, dev = x.shape[0], x.device
    idx = _chosen(n, cfg.noise, g, dev)
    sigma = torch.rand(n, generator=g, device=dev) * 0.04

    def noisy(y):
        noise = torch.randn(y.shape, generator=g, device=dev, dtype=y.dtype)
        return noise.mul_(sigma[idx].view(-1, 1, 1, 1).to(y)).add_(y).clamp_(0, 1)

    return _on(x, idx, noisy)


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float (N, 3, S, S) in [0, 1], augmented."""
    x = images.float().div_(255)
    theta = affine_matrices(x.shape[0], cfg, g, x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Bilinear like Keras' apply_affine_transform (order=1); 'border' repeats edge pixels, which is
    # Keras' fill_mode='nearest'.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Optics and camera (blur, then the sensor's resolution and the file's JPEG) before colour. Blur
    # and resampling are linear filters, so they commute with the per-pixel linear colour jitter
    # (and nearly with HED); doing colour last means no uint8 re-quantisation (JPEG) follows it and
    # its clamp is the last word on the range. Each stage is skipped, drawing no random numbers,
    # when it is off, so configs without them give exactly the batches they gave before.
    # The stages of issue 28 go where they happen: light on the slide, then the lens, the sensor, the
    # file, and the stain and colour steps with the others.
    if cfg.uneven_light:
        x = uneven_light(x, cfg, g)
    if cfg.defocus:
        x = defocus(x, cfg, g)
    if cfg.blur:
        x = random_blur(x, cfg, g)
    if cfg.noise:
        x = sensor_noise(x, cfg, g)
    if cfg.downscale > 1 or cfg.jpeg:
        x = low_res_and_jpeg(x, cfg, g)
    if cfg.pale:
        x = fade(x, cfg, g)
    if cfg.hed:
        x = hed_jitter(x, cfg.hed, g)
    if cfg.tint:
        x = tint(x, cfg, g)
    if cfg.temperature:
        x = temperature(x, cfg, g)
    if cfg.gamma:
        x = camera_gamma(x, cfg, g)
    return color_jitter(x, cfg, g)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1], no augmentation (evaluation)."""
    return images.float().div_(255)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
