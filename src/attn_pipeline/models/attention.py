"""Attention blocks. Each returns its attention map(s) so that reports and steering can use them.

Blocks that sit inside the decoder's feature path preserve the shape of their input, keep
the residual inside, and start as the identity (a learned ``gamma`` initialised to 0), so
adding one to a working decoder starts from that decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AttentionMaps = dict[str, torch.Tensor]


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


class SpatialAttentionMap(nn.Module):
    """A weight map over image positions, computed from the latent code (blog post, step 1).

    ``z (B, D) -> map (B, 1, H, W)``, a softmax over the ``H * W`` positions (each map sums
    to 1). The decoder receives it as an extra input channel, so editing it at generation
    time changes what is drawn where (blog post, step 4).
    """

    def __init__(self, latent_dim: int, size: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.size = size
        self.to_logits = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, size * size)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.to_logits(z)  # (B, H*W)
        return torch.softmax(logits, dim=-1).view(-1, 1, self.size, self.size)


def relative_map(attention_map: torch.Tensor) -> torch.Tensor:
    """A distribution over positions divided by its largest weight: values in (0, 1].

    How :class:`OutputGate` reads a map. It is invariant to renormalisation, so an edit
    that scales one region and renormalises leaves the gate outside that region as it was
    (unless the peak moved into or out of the region). ``(B, 1, h, w) -> (B, 1, h, w)``.
    """
    return attention_map / attention_map.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


class OutputGate(nn.Module):
    """A weight map over positions as a gate on the generator's output logits.

    ``logits + gain * log(relative_map(map))``, the map upsampled (nearest) to the image and
    floored at ``min_weight``: where the map puts a ``k`` times smaller weight than at its
    peak, the pixels' log-odds fall by ``gain * log k``. The decoder's features never see
    the map, so they cannot learn to undo an edit: at generation time, scaling the map in a
    region scales the ink there, and nothing outside it moves (see :func:`relative_map`).
    The map is a function of ``z``, so the gate adds no latent and the ELBO is the VAE's.

    ``gain`` is fixed, not learned: learned, it drifted from 1 to 0.88 in 8 epochs on MNIST,
    the decoder leaning on its features instead, and steering weakened (docs/steering.md).

    Shapes: ``logits (B, C, H, W), map (B, 1, h, w) -> (B, C, H, W)``.
    """

    def __init__(self, gain: float, min_weight: float = 1e-3) -> None:
        super().__init__()
        self.gain = gain
        self.min_weight = min_weight

    def forward(self, logits: torch.Tensor, attention_map: torch.Tensor) -> torch.Tensor:
        weight = F.interpolate(relative_map(attention_map), size=logits.shape[-2:], mode="nearest")
        # floor before the log: no infinite gradient where a softmax weight underflows to 0
        return logits + self.gain * weight.clamp_min(self.min_weight).log()


def as_decoder_channel(attention_map: torch.Tensor) -> torch.Tensor:
    """Scale a distribution over positions so that its mean is 1 (a uniform map is all ones).

    A softmax over 196 positions has values near 0.005; fed as is, the decoder would hardly
    see it. ``(B, 1, H, W) -> (B, 1, H, W)``.
    """
    return attention_map * (attention_map.shape[-1] * attention_map.shape[-2])


class SelfAttention2d(nn.Module):
    """SAGAN self-attention (Zhang et al., 2019, arXiv:1805.08318) over a feature map.

    Query and key are 1x1 convolutions to ``C // 8`` channels, the value a 1x1 convolution
    to ``C``; softmax over positions; ``out = x + gamma * attention(x)`` with ``gamma``
    initialised to 0. The attention itself runs through the fused
    ``F.scaled_dot_product_attention``; the map it reports (how much attention each position
    receives, averaged over queries) is computed only outside training, where it is read.

    Shapes: ``x (B, C, H, W) -> (x' (B, C, H, W), {"self": (B, 1, H, W)} or {})``.
    """

    def __init__(self, channels: int, key_channels: int | None = None) -> None:
        super().__init__()
        key_channels = key_channels or max(1, channels // 8)
        self.to_q = nn.Conv2d(channels, key_channels, 1, bias=False)
        self.to_k = nn.Conv2d(channels, key_channels, 1, bias=False)
        self.to_v = nn.Conv2d(channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, AttentionMaps]:
        b, c, h, w = x.shape
        q = self.to_q(x).flatten(2).transpose(1, 2)  # (B, N, Ck)
        k = self.to_k(x).flatten(2).transpose(1, 2)  # (B, N, Ck)
        v = self.to_v(x).flatten(2).transpose(1, 2)  # (B, N, C)
        # SAGAN uses unscaled dot products: scale=1 keeps that definition.
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, N, C)
        out = out.transpose(1, 2).reshape(b, c, h, w)
        maps: AttentionMaps = {}
        if not self.training:
            weights = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # (B, N, N)
            maps["self"] = weights.mean(dim=1).view(b, 1, h, w)
        return x + self.gamma * out, maps


def naive_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q @ k^T) @ v`` written out, for the cost benchmark. ``(B, N, C)`` inputs."""
    return torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v


class CBAM(nn.Module):
    """CBAM (Woo et al., 2018, arXiv:1807.06521): channel, then spatial attention.

    Channel gate: a shared MLP over average- and max-pooled features, sigmoid. Spatial gate:
    a 7x7 convolution over the channel-wise average and max, sigmoid. Used residually,
    ``out = x + gamma * (cbam(x) - x)`` with ``gamma`` initialised to 0.

    Shapes: ``x (B, C, H, W) -> (x' (B, C, H, W), {"cbam_spatial": (B, 1, H, W),
    "cbam_channel": (B, C)})``.
    """

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, AttentionMaps]:
        pooled = self.channel_mlp(x.mean(dim=(2, 3))) + self.channel_mlp(x.amax(dim=(2, 3)))
        channel_gate = torch.sigmoid(pooled)  # (B, C)
        refined = x * channel_gate[:, :, None, None]
        summary = torch.cat(
            [refined.mean(dim=1, keepdim=True), refined.amax(dim=1, keepdim=True)], dim=1
        )  # (B, 2, H, W)
        spatial_gate = torch.sigmoid(self.spatial_conv(summary))  # (B, 1, H, W)
        # lerp is x + gamma * (refined * spatial_gate - x) in one op: fewer full-size
        # temporaries for the block's forward and backward. It takes
        # one dtype: under bfloat16 autocast the features are bf16, gamma stays fp32.
        end = (refined * spatial_gate).to(x.dtype)
        out = torch.lerp(x, end, self.gamma.to(x.dtype))
        return out, {"cbam_spatial": spatial_gate, "cbam_channel": channel_gate}
