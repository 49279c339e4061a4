"""The reference project's Keras model, ported faithfully to PyTorch.

Keras original (120 x 120 x 3 input):
    Conv2D(128, 8, strides=3, activation='relu'); BatchNormalization()
    Conv2D(256, 5, padding='same', activation='relu'); BatchNormalization(); MaxPool2D(3)
    Conv2D(256, 3, padding='same', activation='relu'); BatchNormalization()
    Reshape((256, -1))          # on the channels-last 12 x 12 x 256 map
    MultiHeadAttention(num_heads=6, key_dim=64)(x, x); LayerNormalization()
    Flatten(); Dense(1024, relu); Dropout(0.5); Dense(1024, relu); Dropout(0.5); Dense(5, softmax)

Keras counts BatchNorm's moving mean and variance as (non-trainable) parameters, 1,280 of
them here; PyTorch keeps them as buffers, so this port reports 40,462,773 against the
reference's 40,464,053 (0.003% apart).
"""
from __future__ import annotations

import torch.nn as nn


class KerasMultiHeadAttention(nn.Module):
    """keras.layers.MultiHeadAttention: per-head key_dim independent of the model width."""

    def __init__(self, dim: int, num_heads: int, key_dim: int):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        inner = num_heads * key_dim
        self.q, self.k, self.v = (nn.Linear(dim, inner) for _ in range(3))
        self.out = nn.Linear(inner, dim)

    def forward(self, x):
        n, t, _ = x.shape
        split = lambda y: y.view(n, t, self.num_heads, self.key_dim).transpose(1, 2)
        y = nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(y.transpose(1, 2).reshape(n, t, -1))


class SeedMHCNN(nn.Module):
    default_img_size = 120

    def __init__(self, num_classes: int = 5, img_size: int = 120, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 128, 8, stride=3), nn.ReLU(inplace=True), nn.BatchNorm2d(128, eps=1e-3, momentum=0.01),
            nn.Conv2d(128, 256, 5, padding="same"), nn.ReLU(inplace=True), nn.BatchNorm2d(256, eps=1e-3, momentum=0.01),
            nn.MaxPool2d(3),
            nn.Conv2d(256, 256, 3, padding="same"), nn.ReLU(inplace=True), nn.BatchNorm2d(256, eps=1e-3, momentum=0.01),
        )
        side = ((img_size - 8) // 3 + 1) // 3
        tokens, token_dim = 256, side * side * 256 // 256
        self.attention = KerasMultiHeadAttention(token_dim, num_heads=6, key_dim=64)
        self.norm = nn.LayerNorm(token_dim, eps=1e-3)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(tokens * token_dim, 1024), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(1024, 1024), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(1024, num_classes),  # logits; softmax lives in the loss
        )

    def cam_layer(self) -> nn.Module:
        # The BatchNorm closing `features`: the last Conv2d is followed by an in-place ReLU that
        # would overwrite the activation a hook on the conv keeps.
        return self.features[-1]

    def forward(self, x):
        x = self.features(x)
        # Keras reshapes the channels-last map in memory order: NHWC, then 256 rows.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], 256, -1)
        x = self.norm(self.attention(x))
        return self.head(x)
