"""mhcnn: a compact multi-head attention CNN for white-cell crops, sized for a 2-core CPU.

    image (S x S) -> conv stem, stride 16 -> (S/16)^2 spatial tokens + learned positions
          -> transformer blocks (multi-head self-attention + MLP)
          -> attention pooling (a learned query attends over the tokens) -> dropout -> classes

The convolutions find texture and granules cheaply; the attention relates nucleus lobes and
cytoplasm across the cell; attention pooling gives a per-image map of where the model looked.

The convolutions' normalisation is BatchNorm by default (the shipped checkpoint's). BatchNorm
normalises with statistics of the training batches, and at test time with their running means:
one lab's colour and contrast, baked in. `norm="group"` or `"layer"` normalises each image by its
own statistics instead; a public benchmark of Raabin-WBC models reports that this lifts accuracy on
other labs. Their convolutions standardise their weights (StdConv2d), without which mhcnn
stalls at chance for many steps.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import WbcnetError

NORMS = ("batch", "group", "layer")


class StdConv2d(nn.Conv2d):
    """Conv2d with Weight Standardisation (Qiao et al. 2019): each filter is used at zero mean and
    unit variance, the companion of GroupNorm in BiT (Kolesnikov et al. 2020).

    GroupNorm alone gives every image the same per-group mean and variance, and what the filters
    make of that shared part swamped the differences between images: at initialisation the pooled
    features were nearly the same for every cell, and mhcnn sat at chance loss for about 60 steps
    of fitting 65 cells that it fits in 10 with BatchNorm. A zero-mean filter ignores the shared
    part; with it, group and layer norm fit those cells in about 15 steps. The parameter is still
    `weight`, so the state dict's keys do not change."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) * torch.rsqrt(w.var((1, 2, 3), keepdim=True, unbiased=False) + 1e-6)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def conv(norm: str, cin, cout, kernel, stride):
    # the shipped checkpoint's plain convolution under BatchNorm; weight-standardised under the others
    return (nn.Conv2d if norm == "batch" else StdConv2d)(cin, cout, kernel, stride, kernel // 2, bias=False)


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm2d, GroupNorm with 8 groups (fewer where 8 does not divide `channels`), or
    GroupNorm with one group, which is LayerNorm over (C, H, W). All have a per-channel weight and
    bias, so a state dict's keys differ between them only by BatchNorm's running statistics."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    raise WbcnetError(f"mhcnn: norm must be one of {', '.join(NORMS)}, not {norm!r}")


def conv_bn(cin, cout, stride=1, norm="batch"):
    # Named for BatchNorm, the default. Every norm sits at index 1, so the state dict's keys keep their names.
    return nn.Sequential(conv(norm, cin, cout, 3, stride), norm_layer(norm, cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm="batch"):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride, norm)
        self.conv2 = nn.Sequential(conv(norm, cout, cout, 3, 1), norm_layer(norm, cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(conv(norm, cin, cout, 1, stride), norm_layer(norm, cout)))

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.skip(x), inplace=True)


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=2.0, drop=0.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.mlp(self.norm2(x)))


class AttentionPool(nn.Module):
    """A learned query attends over the tokens; returns the pooled vector and the attention map."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, x):
        n, t, d = x.shape
        k, v = self.kv(self.norm(x)).view(n, t, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q = self.query.expand(n, -1, -1).view(n, 1, self.heads, d // self.heads).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)  # (n, heads, 1, t)
        y = (attn @ v).transpose(1, 2).reshape(n, d)
        return self.proj(y), attn.mean(1).squeeze(1)


class MHCNN(nn.Module):
    default_img_size = 112

    def __init__(self, num_classes: int = 5, img_size: int = 112, widths=(24, 64, 128, 192), depth: int = 2,
                 heads: int = 6, mlp_ratio: float = 2.0, dropout: float = 0.2, attn_dropout: float = 0.0,
                 image_norm: bool = True, norm: str = "batch"):
        super().__init__()
        # Standardise each image's channels by its own mean and std: a global colour cast from another
        # stain, camera or white balance is a per-channel affine change, and this cancels it.
        self.image_norm = image_norm
        w0, w1, w2, w3 = widths
        # Two plain strided convs take the image to S/4 cheaply; residual blocks do the rest.
        self.stem = nn.Sequential(conv_bn(3, w0, 2, norm), conv_bn(w0, w1, 2, norm))                # S/4
        self.stages = nn.Sequential(ResidualBlock(w1, w2, 2, norm), ResidualBlock(w2, w3, 2, norm))  # S/8, S/16
        self.grid = max(1, img_size // 16)
        self.pos = nn.Parameter(torch.zeros(1, w3, self.grid, self.grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(w3, heads, mlp_ratio, attn_dropout) for _ in range(depth)])
        self.pool = AttentionPool(w3, heads)
        self.norm = nn.LayerNorm(w3)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(w3, num_classes)

    def cam_layer(self) -> nn.Module:
        # The last residual stage (S/16), right before its tokens enter attention.
        return self.stages[-1]

    def tokens(self, x):
        if self.image_norm:
            x = (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 1e-3)
        x = self.stages(self.stem(x))
        pos = self.pos if x.shape[-2:] == self.pos.shape[-2:] else F.interpolate(
            self.pos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = x + pos
        return x.flatten(2).transpose(1, 2), x.shape[-2:]

    def forward_with_attention(self, x):
        """Logits and the pooling attention as a (N, h, w) map over the token grid."""
        t, hw = self.tokens(x)
        pooled, attn = self.pool(self.blocks(t))
        return self.fc(self.drop(self.norm(pooled))), attn.view(-1, *hw)

    def forward(self, x):
        return self.forward_with_attention(x)[0]
