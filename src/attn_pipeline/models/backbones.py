"""Encoder and decoder backbones for images of any ``(C, H, W)`` the data set has.

Encoders map images to the parameters of a diagonal Gaussian posterior; decoders map a
code vector to per-pixel Bernoulli logits. The MLP pair is the classic 784-400-z shape on
MNIST (the blog post's and pytorch/examples'); the conv pair downsamples twice by 2, so it
takes square images whose side is a multiple of 4 (MNIST: 28 -> 14 -> 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionMaps


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
    """``(B, in_dim) -> logits (B, C, H, W)`` through one hidden layer.

    An attention map ``(B, 1, h, w)``, when given (already scaled for the decoder by the
    generator), is flattened and appended to the code (so ``in_dim`` counts its ``h * w``).
    """

    def __init__(self, *, in_dim: int, hidden_dim: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = image_shape
        n_pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n_pixels, bias=False)
        )
        self.output_bias = PixelBias(image_shape)

    def forward(
        self, code: torch.Tensor, attention_map: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, AttentionMaps]:
        if attention_map is not None:
            code = torch.cat([code, attention_map.flatten(1)], dim=1)
        return self.output_bias(self.net(code).view(-1, *self.image_shape)), {}


class SubPixelConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(kernel_size=4, stride=2, padding=1)``, computed as a 3x3
    convolution into the four output phases followed by ``pixel_shuffle(2)``.

    The same parameters (state-dict compatible) and the same function, to float rounding;
    ``(B, C_in, H, W) -> (B, C_out, 2H, 2W)``. With few output channels (the decoder's
    last layer: 32 -> 1) oneDNN's transposed convolution is poorly vectorised, and this form
    is several times faster on a CPU (docs/performance.md), which matters for the
    importance-weighted NLL's K decodes per test image.
    """

    # Output phase a (row or column parity) at window offset u-1 reads kernel tap
    # _TAPS[a][u]; 4 is a zero tap (after padding the kernel to 5x5).
    _TAPS = ((3, 1, 4), (4, 2, 0))

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias)
        taps = torch.tensor(self._TAPS)
        self.register_buffer("_rows", taps[:, None, :, None].expand(2, 2, 3, 3), persistent=False)
        self.register_buffer("_cols", taps[None, :, None, :].expand(2, 2, 3, 3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # no output_size: the size is 2H x 2W
        c_in, c_out = self.in_channels, self.out_channels
        padded = F.pad(self.weight, (0, 1, 0, 1))  # (C_in, C_out, 5, 5)
        phases = padded[:, :, self._rows, self._cols]  # (C_in, C_out, 2, 2, 3, 3)
        # conv2d weight (C_out * 4, C_in, 3, 3), ordered o*4 + a*2 + b as pixel_shuffle reads
        kernel = phases.permute(1, 2, 3, 0, 4, 5).reshape(c_out * 4, c_in, 3, 3)
        bias = self.bias.repeat_interleave(4) if self.bias is not None else None
        return F.pixel_shuffle(F.conv2d(x, kernel, bias, padding=1), 2)


def conv_sides(image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """The sides of the conv backbone's two feature maps, ``(H / 4, H / 2)``, for square
    images whose side is a multiple of 4 (28x28: 7 and 14)."""
    _, height, width = image_shape
    if height != width or height % 4:
        raise ValueError(
            f"the conv backbone takes square images whose side is a multiple of 4, not "
            f"{height}x{width}: use backbone: mlp, or pad the images (data_prep)"
        )
    return height // 4, height // 2


class ConvEncoder(nn.Module):
    """``(B, C, H, H) -> mu (B, z), logvar (B, z)``: two stride-2 convs, H -> H/2 -> H/4
    (28 -> 14 -> 7)."""

    def __init__(
        self, *, image_shape: tuple[int, int, int], channels: tuple[int, int], latent_dim: int
    ) -> None:
        super().__init__()
        c1, c2 = channels
        coarse, _ = conv_sides(image_shape)
        self.features = nn.Sequential(
            nn.Conv2d(image_shape[0], c1, kernel_size=4, stride=2, padding=1),  # (B, c1, H/2, H/2)
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=4, stride=2, padding=1),  # (B, c2, H/4, H/4)
            nn.ReLU(),
            nn.Flatten(),
        )
        self.to_mu = nn.Linear(c2 * coarse * coarse, latent_dim)
        self.to_logvar = nn.Linear(c2 * coarse * coarse, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.to_mu(h), self.to_logvar(h)


class ConvDecoder(nn.Module):
    """``(B, in_dim) -> logits (B, C, H, H)``: a linear map to H/4 x H/4, two stride-2
    deconvs (28x28 images: 7 -> 14 -> 28).

    Attention hooks in at one resolution, H/4 or H/2 (``attention_resolution``; 7 or 14 for
    28x28): a feature block (self-attention, CBAM: ``(B, c, r, r) -> same, maps``) applied
    to the features there, and/or an attention map ``(B, 1, r, r)`` concatenated to them as
    an extra channel.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        channels: tuple[int, int],
        image_shape: tuple[int, int, int],
        attention_resolution: int | None,
        block: nn.Module | None = None,
        takes_map: bool = False,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.c2 = c2
        self.coarse, fine = conv_sides(image_shape)
        if block is None and not takes_map:
            attention_resolution = None  # nothing attends: any setting is as good
        elif attention_resolution not in (self.coarse, fine):
            raise ValueError(
                f"attention_resolution {attention_resolution} is not a side of the conv "
                f"decoder's feature maps for {image_shape[1]}x{image_shape[2]} images: use "
                f"{self.coarse} or {fine}"
            )
        self.attention_resolution = attention_resolution
        self.block = block
        extra = 1 if takes_map else 0  # (attention_resolution None: extra is 0 too)
        at_coarse, at_fine = (extra, 0) if attention_resolution == self.coarse else (0, extra)
        self.project = nn.Sequential(nn.Linear(in_dim, c2 * self.coarse**2), nn.ReLU())
        # the attribute names are the state dict's keys (saved models load by them)
        self.up14 = nn.Sequential(
            nn.ConvTranspose2d(c2 + at_coarse, c1, kernel_size=4, stride=2, padding=1), nn.ReLU()
        )
        self.up28 = SubPixelConvTranspose2d(c1 + at_fine, image_shape[0], bias=False)
        self.output_bias = PixelBias(image_shape)

    def _attend(
        self, h: torch.Tensor, attention_map: torch.Tensor | None, maps: AttentionMaps
    ) -> torch.Tensor:
        if self.block is not None:
            h, block_maps = self.block(h)
            maps.update(block_maps)
        if attention_map is not None:
            h = torch.cat([h, attention_map], dim=1)
        return h

    def forward(
        self, code: torch.Tensor, attention_map: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, AttentionMaps]:
        maps: AttentionMaps = {}
        h = self.project(code).view(-1, self.c2, self.coarse, self.coarse)  # (B, c2, H/4, H/4)
        if self.attention_resolution == self.coarse:
            h = self._attend(h, attention_map, maps)
        h = self.up14(h)  # (B, c1, H/2, H/2)
        if self.attention_resolution == 2 * self.coarse:
            h = self._attend(h, attention_map, maps)
        return self.output_bias(self.up28(h)), maps  # (B, C, H, H)
