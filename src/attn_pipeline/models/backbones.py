"""Encoder and decoder backbones for 28x28 images.

Encoders map images to the parameters of a diagonal Gaussian posterior; decoders map a
code vector to per-pixel Bernoulli logits. The MLP pair is the classic 784-400-z shape
(the blog post's and pytorch/examples'); the conv pair downsamples twice by 2.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPEncoder(nn.Module):
    """``(B, C, H, W) -> mu (B, z), logvar (B, z)`` through one hidden layer."""

    def __init__(self, *, in_features: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden_dim), nn.ReLU())
        self.to_mu = nn.Linear(hidden_dim, latent_dim)
        self.to_logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        return self.to_mu(h), self.to_logvar(h)


class PixelBias(nn.Module):
    """A learned logit offset per pixel, ``(B, C, H, W) -> (B, C, H, W)``.

    Decoders end with it so that :meth:`init_from_mean` can start them at the data's mean
    image, instead of at grey: the first epochs then learn shapes, not the background.
    """

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(image_shape))

    @torch.no_grad()
    def init_from_mean(self, mean_image: torch.Tensor, eps: float = 1e-3) -> None:
        """Set the bias to ``logit(mean_image)``, so ``sigmoid`` of it is the mean image."""
        self.bias.copy_(torch.logit(mean_image.clamp(eps, 1 - eps)))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + self.bias


class MLPDecoder(nn.Module):
    """``(B, in_dim) -> logits (B, C, H, W)`` through one hidden layer."""

    def __init__(self, *, in_dim: int, hidden_dim: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = image_shape
        n_pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n_pixels, bias=False)
        )
        self.output_bias = PixelBias(image_shape)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.output_bias(self.net(code).view(-1, *self.image_shape))


class ConvEncoder(nn.Module):
    """``(B, C, 28, 28) -> mu (B, z), logvar (B, z)``: two stride-2 convs, 28 -> 14 -> 7."""

    def __init__(self, *, image_channels: int, channels: tuple[int, int], latent_dim: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(image_channels, c1, kernel_size=4, stride=2, padding=1),  # (B, c1, 14, 14)
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=4, stride=2, padding=1),  # (B, c2, 7, 7)
            nn.ReLU(),
            nn.Flatten(),
        )
        self.to_mu = nn.Linear(c2 * 7 * 7, latent_dim)
        self.to_logvar = nn.Linear(c2 * 7 * 7, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.to_mu(h), self.to_logvar(h)


class ConvDecoder(nn.Module):
    """``(B, in_dim) -> logits (B, C, 28, 28)``: a linear map to 7x7, two stride-2 deconvs."""

    def __init__(self, *, in_dim: int, channels: tuple[int, int], image_channels: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.c2 = c2
        self.project = nn.Sequential(nn.Linear(in_dim, c2 * 7 * 7), nn.ReLU())
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, kernel_size=4, stride=2, padding=1),  # (B, c1, 14, 14)
            nn.ReLU(),
            nn.ConvTranspose2d(
                c1, image_channels, kernel_size=4, stride=2, padding=1, bias=False
            ),  # (B, C, 28, 28)
        )
        self.output_bias = PixelBias((image_channels, 28, 28))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        h = self.project(code).view(-1, self.c2, 7, 7)  # (B, c2, 7, 7)
        return self.output_bias(self.upsample(h))
