"""Batched augmentation on uint8 tensors, on whatever device the batch is on.

One affine warp per image does the reference project's Keras ImageDataGenerator set (rotation
+-30 deg, width/height shift 0.2, shear 0.25, zoom 0.2, horizontal flip, bilinear sampling, nearest fill) plus a
vertical flip and 90-degree turns, since a cell on a slide has no up. A mild colour jitter
(brightness, contrast, saturation, hue, per-channel gain) stands in for stain and camera
differences, and keeps a model from learning one class's colour instead of its shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    rotation: float = 30.0        # degrees, uniform +-
    shift: float = 0.2            # fraction of the side, uniform +-
    shear: float = 0.25           # shear factor, uniform +-
    zoom: float = 0.2             # scale in [1 - zoom, 1 + zoom], per axis like Keras
    magnify: float = 1.0          # isotropic zoom-in up to this factor (log-uniform, half the images):
                                  # other labs frame cells tighter; 1 turns it off
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.2
    hue: float = 0.03             # fraction of a full turn of the colour wheel
    channel_gain: float = 0.05    # independent R, G, B gain, uniform +-


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
    return x.clamp_(0, 1)


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float (N, 3, S, S) in [0, 1], augmented."""
    x = images.float().div_(255)
    theta = affine_matrices(x.shape[0], cfg, g, x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Bilinear like Keras' apply_affine_transform (order=1); 'border' repeats edge pixels, which is
    # Keras' fill_mode='nearest'.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return color_jitter(x, cfg, g)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1], no augmentation (evaluation)."""
    return images.float().div_(255)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
