"""Attention blocks. Each returns its attention map so that reports and steering can use it."""

from __future__ import annotations

import torch
from torch import nn


class LatentSoftmaxAttention(nn.Module):
    """The blog post's attention module, literally: ``a = softmax(w * z)``.

    ``w`` is one trainable weight per latent dimension, initialised to ones (so at the start
    the map is ``softmax(z)``). The generator's input is ``concat(z, a)``.

    Shapes: ``z (B, D) -> (concat(z, a) (B, 2D), a (B, D))``.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(latent_dim))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = torch.softmax(self.weight * z, dim=-1)
        return torch.cat([z, attention], dim=-1), attention
