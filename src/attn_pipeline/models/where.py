"""The ``where`` variant's parts: a map that carries the digit's position, and the glyph
drawn where the map puts its weight (Attend-Infer-Repeat's *where*, one object; the blog
post's step 1: the position is inferred from the image).

The latent code is ``z = (z_what (B, d), z_where (B, 2))``, every dimension with the VAE's
N(0, I) prior and KL, so the ELBO stays a bound on the likelihood. ``z_where`` is a glyph
centre on the canvas through the prior's CDF (uniform over the centres a glyph of side
``g`` can have on a canvas of side ``S``: ``[g/2, S - g/2]``); the map is a bump there; the
decoder draws a ``g x g`` glyph from ``z_what`` and places it at the map's centre of mass.
Editing the map (a box) moves the whole glyph, unchanged, into the box.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_ROOT2 = math.sqrt(2.0)


def pixel_centres(size: int, device: torch.device | None = None) -> torch.Tensor:
    """``(size,)`` coordinates of pixel centres: 0.5, 1.5, ..."""
    return torch.arange(size, device=device, dtype=torch.float32) + 0.5


def ink_centroid(images: torch.Tensor) -> torch.Tensor:
    """``images (B, C, H, W) -> (B, 2)`` the centre of mass of the ink, (row, column) in
    pixels; the image's centre for an empty image."""
    ink = images.sum(1)  # (B, H, W)
    total = ink.sum(dim=(1, 2))
    rows = pixel_centres(ink.shape[1], ink.device)
    cols = pixel_centres(ink.shape[2], ink.device)
    row = (ink.sum(2) * rows).sum(1) / total.clamp_min(1e-8)
    col = (ink.sum(1) * cols).sum(1) / total.clamp_min(1e-8)
    centre = torch.stack([row, col], dim=1)
    middle = torch.tensor([ink.shape[1] / 2, ink.shape[2] / 2], device=ink.device)
    return torch.where(total[:, None] > 0, centre, middle)


def _sampling_grid(centre: torch.Tensor, source: int, target: int, sign: float) -> torch.Tensor:
    """The ``grid_sample`` grid ``(B, target, target, 2)`` that reads a ``source``-sided
    image so that its point ``source/2`` (sign -1: a glyph placed on a canvas) or the
    canvas point ``centre`` (sign +1: a window cut from a canvas) lands at the centre."""
    p = pixel_centres(target, centre.device)  # target pixel centres
    if sign < 0:  # canvas pixel p shows glyph point p - centre + g/2
        rows = p[None, :] - centre[:, 0:1] + source / 2
        cols = p[None, :] - centre[:, 1:2] + source / 2
    else:  # window pixel p shows canvas point p + centre - g/2
        rows = p[None, :] + centre[:, 0:1] - target / 2
        cols = p[None, :] + centre[:, 1:2] - target / 2
    y = (2 * rows / source - 1)[:, :, None].expand(-1, -1, target)
    x = (2 * cols / source - 1)[:, None, :].expand(-1, target, -1)
    return torch.stack([x, y], dim=-1)  # grid_sample wants (x, y)


def cut_window(canvas: torch.Tensor, centre: torch.Tensor, side: int) -> torch.Tensor:
    """``canvas (B, C, S, S), centre (B, 2) -> (B, C, side, side)``: the window centred
    there (zeros beyond the canvas), bilinear."""
    grid = _sampling_grid(centre, canvas.shape[-1], side, +1.0)
    return F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def place_glyph(
    glyph: torch.Tensor, centre: torch.Tensor, canvas: int, background: torch.Tensor
) -> torch.Tensor:
    """``glyph (B, C, g, g)`` logits placed with their centre at ``centre (B, 2)`` on a
    ``canvas``-sided image whose other pixels have the logit ``background``: ``(B, C, S, S)``."""
    grid = _sampling_grid(centre, glyph.shape[-1], canvas, -1.0)
    placed = F.grid_sample(
        glyph - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return placed + background


class GlyphCentres(nn.Module):
    """Glyph centres and ``z_where``, through the prior's CDF: ``N(0, 1)`` is uniform over
    the centres ``[g/2, S - g/2]`` on each axis (those a whole glyph can have)."""

    def __init__(self, canvas: int, glyph: int) -> None:
        super().__init__()
        if glyph >= canvas:
            raise ValueError(
                f"model.glyph_size ({glyph}) must be smaller than the images' side "
                f"({canvas}): the glyph moves on the canvas"
            )
        self.low, self.high = glyph / 2, canvas - glyph / 2

    def centre(self, z_where: torch.Tensor) -> torch.Tensor:
        """``(B, 2) -> (B, 2)`` pixels."""
        u = 0.5 * (1 + torch.erf(z_where / _ROOT2))
        return self.low + (self.high - self.low) * u

    def code(self, centre: torch.Tensor, eps: float = 0.005) -> torch.Tensor:
        """The inverse: ``(B, 2)`` pixels (clamped into the range) -> ``z_where (B, 2)``."""
        u = ((centre - self.low) / (self.high - self.low)).clamp(eps, 1 - eps)
        return _ROOT2 * torch.erfinv(2 * u - 1)

    def clamp(self, centre: torch.Tensor) -> torch.Tensor:
        return centre.clamp(self.low, self.high)


class WhereEncoder(nn.Module):
    """``x (B, C, S, S) -> mu (B, d + 2), logvar (B, d + 2)``: ``z_where``'s mean is the
    ink's centre of mass (through :class:`GlyphCentres`), its spread learned; ``z_what``
    comes from ``glyph_encoder`` reading the ``g x g`` window centred there."""

    def __init__(self, glyph_encoder: nn.Module, centres: GlyphCentres, glyph: int) -> None:
        super().__init__()
        self.glyph_encoder = glyph_encoder
        self.centres = centres
        self.glyph = glyph
        self.where_logvar = nn.Parameter(torch.full((2,), -6.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centre = self.centres.clamp(ink_centroid(x.float()))
        mu_what, logvar_what = self.glyph_encoder(cut_window(x, centre, self.glyph))
        mu_where = self.centres.code(centre).to(mu_what.dtype)
        logvar_where = self.where_logvar.to(mu_what.dtype).expand(len(x), 2)
        return torch.cat([mu_what, mu_where], 1), torch.cat([logvar_what, logvar_where], 1)


class PositionMap(nn.Module):
    """``z (B, d + 2) -> map (B, 1, m, m)``: a Gaussian bump (sd ``S / 8``) at the centre
    ``z_where`` gives, over an ``m x m`` grid of the canvas; a distribution over positions,
    like the other variants' maps, so the same edits apply."""

    def __init__(self, centres: GlyphCentres, canvas: int, size: int) -> None:
        super().__init__()
        self.centres = centres
        self.canvas = canvas
        self.size = size
        self.sd = canvas / 8

    def cell_centres(self, device: torch.device) -> torch.Tensor:
        return pixel_centres(self.size, device) * self.canvas / self.size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        centre = self.centres.centre(z[:, -2:].float())  # (B, 2)
        cells = self.cell_centres(z.device)
        rows = torch.exp(-0.5 * ((cells[None, :] - centre[:, 0:1]) / self.sd) ** 2)
        cols = torch.exp(-0.5 * ((cells[None, :] - centre[:, 1:2]) / self.sd) ** 2)
        bump = rows[:, :, None] * cols[:, None, :]
        return (bump / bump.sum(dim=(1, 2), keepdim=True))[:, None]

    def centre_of(self, attention_map: torch.Tensor) -> torch.Tensor:
        """``(B, 1, m, m) -> (B, 2)``: the map's centre of mass in pixels, clamped to the
        centres a whole glyph can have."""
        # a map is an image of weights: its centre of mass in cells, scaled to pixels
        centre = ink_centroid(attention_map.float()) * (self.canvas / self.size)
        return self.centres.clamp(centre)


class GlyphPlacement(nn.Module):
    """``glyph logits (B, C, g, g), map (B, 1, m, m) -> canvas logits (B, C, S, S)``: the
    glyph at the map's centre of mass, a learned background logit elsewhere."""

    def __init__(self, position_map: PositionMap, canvas: int) -> None:
        super().__init__()
        self.position_map = position_map
        self.canvas = canvas
        self.background = nn.Parameter(torch.tensor(-6.0))

    def forward(self, glyph: torch.Tensor, attention_map: torch.Tensor) -> torch.Tensor:
        centre = self.position_map.centre_of(attention_map).to(glyph.dtype)
        return place_glyph(glyph, centre, self.canvas, self.background.to(glyph.dtype))
