"""The ``objects`` variant's parts: a grid of cells over the canvas, each cell one object
that is there or not, sits somewhere in the cell and looks some way (SPAIR, Crawford &
Pineau 2019, arXiv:1902.00447; Attend-Infer-Repeat's *pres*, *where* and *what*, Eslami et
al. 2016, arXiv:1603.08575, for several objects at once). The blog post's map over
positions, with content at each position.

Every latent dimension is a standard normal under the prior, so the KL is the VAE's and the
ELBO stays a bound. Per cell, in this order (:data:`PRES`, :data:`WHERE`, then ``what``):

- ``z_pres`` (1): the object is there when ``z_pres > PRESENCE_THRESHOLD``, a probit with
  prior presence :data:`PRESENCE_PRIOR` (Albert & Chib 1993's latent-threshold form of a
  Bernoulli); the decoder takes it relaxed, ``sigmoid((z_pres - threshold) /
  TEMPERATURE)``, as the binary Concrete relaxation does (Maddison et al. 2017,
  arXiv:1611.00712), so reparameterised gradients reach it;
- ``z_where`` (2): the glyph's centre, uniform over the cell under the prior (through the
  normal's CDF, as :class:`~attn_pipeline.models.where.GlyphCentres`);
- ``z_what`` (``d``): the glyph's appearance, drawn by a glyph decoder.

A pixel's ink is the strongest of the objects' ink there, over a learned background (a
union of the objects: an object drawn twice explains nothing more, so a digit is one
object, not two overlapping halves). Out of training (``model.eval()``: evaluation and generation)
each glyph's centre is rounded to whole pixels, so moving an object shifts its glyph
exactly; the test figures are of that model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Prior probability that a cell holds an object: scenes of 1-3 digits on a 4x4 grid hold
#: about 2 objects in 16 cells.
PRESENCE_PRIOR = 0.125
#: ``z_pres`` above this is an object: ``P(z > t) = PRESENCE_PRIOR`` for ``z ~ N(0, 1)``.
PRESENCE_THRESHOLD = math.sqrt(2.0) * torch.erfinv(torch.tensor(1 - 2 * PRESENCE_PRIOR)).item()
#: Temperature of the relaxed presence the decoder takes (0: the hard threshold).
TEMPERATURE = 0.25
#: Offsets of the per-cell latent: presence, then the centre (row, column), then ``what``.
PRES, WHERE, WHAT = 0, slice(1, 3), slice(3, None)
_ROOT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class CellLayout:
    """The grid: ``cells`` a side over a ``canvas``-sided image, glyphs of side ``glyph``,
    ``what`` appearance dimensions per cell."""

    canvas: int
    cells: int
    glyph: int
    what: int

    def __post_init__(self) -> None:
        side = self.canvas // self.cells
        if self.cells * side != self.canvas or side & (side - 1) or self.glyph % 2:
            raise ValueError(
                f"model.attention_resolution ({self.cells} cells) must divide the "
                f"{self.canvas}-pixel canvas into cells whose side is a power of two, and "
                f"model.glyph_size ({self.glyph}) be even (64-pixel canvases: 4 cells, 28)"
            )

    @property
    def per_cell(self) -> int:
        return 3 + self.what

    @property
    def latent_dim(self) -> int:
        return self.cells * self.cells * self.per_cell

    @property
    def cell_side(self) -> float:
        return self.canvas / self.cells

    def split(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, D) -> (B, cells * cells, per_cell)``, cells in row-major order."""
        return z.view(len(z), self.cells * self.cells, self.per_cell)

    def cell_origins(self, device: torch.device | None = None) -> torch.Tensor:
        """``(cells * cells, 2)``: each cell's top-left corner in pixels, row-major."""
        edges = torch.arange(self.cells, device=device, dtype=torch.float32) * self.cell_side
        return torch.cartesian_prod(edges, edges)

    def centres(self, z_where: torch.Tensor) -> torch.Tensor:
        """``z_where (B, n, 2) -> (B, n, 2)`` glyph centres in pixels, uniform over each cell
        under the prior."""
        u = 0.5 * (1 + torch.erf(z_where.float() / _ROOT2))
        return self.cell_origins(z_where.device) + self.cell_side * u

    def code(self, centres: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`centres`: ``z_where (B, 2)`` that puts the glyphs of the
        cells ``cells (B,)`` at the whole-pixel ``centres (B, 2)`` (inside them), within
        0.01 pixel of it, so drawn at it."""
        u = ((centres - self.cell_origins(centres.device)[cells]) / self.cell_side).clamp(
            1e-3, 1 - 1e-3
        )
        return _ROOT2 * torch.erfinv(2 * u - 1)

    def cell_of(self, point: torch.Tensor) -> torch.Tensor:
        """``point (..., 2)`` pixels -> ``(...)`` the index of the cell holding it."""
        index = (point / self.cell_side).floor().long().clamp(0, self.cells - 1)
        return index[..., 0] * self.cells + index[..., 1]


def presence(z_pres: torch.Tensor) -> torch.Tensor:
    """The relaxed presence the decoder takes, in (0, 1)."""
    return torch.sigmoid((z_pres - PRESENCE_THRESHOLD) / TEMPERATURE)


def shift_matrices(offset: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``offset (N,) -> (N, rows, cols)``: ``M[n, p, j] = max(0, 1 - |p - j - offset[n]|)``,
    bilinear interpolation along one axis as a matrix. ``M @ v`` shifts a ``cols``-long
    ``v`` by ``offset`` pixels onto ``rows`` pixels (zeros beyond ``v``); ``M.T @ u`` reads
    ``cols`` pixels of ``u`` back from there. At a whole-pixel offset it is an exact shift.
    The same values as ``grid_sample``'s bilinear with zero padding, as two small matrix
    products instead of a sampling grid per output pixel."""
    p = torch.arange(rows, device=offset.device, dtype=offset.dtype)[:, None]
    j = torch.arange(cols, device=offset.device, dtype=offset.dtype)[None, :]
    return torch.relu(1 - (p - j - offset[:, None, None]).abs())


class CellRegions:
    """Each cell's region of the canvas: the cell and the ``g / 2 + 1`` pixels around it,
    every pixel a glyph centred in the cell can reach (bilinear included). Regions overlap;
    :meth:`cut` gives them, :meth:`paste_max` puts them back onto the canvas."""

    def __init__(self, layout: CellLayout) -> None:
        self.layout = layout
        self.margin = layout.glyph // 2 + 1
        self.stride = layout.canvas // layout.cells
        self.side = self.stride + 2 * self.margin

    def origins(self, device: torch.device | None = None) -> torch.Tensor:
        """``(n, 2)``: each region's top-left corner on the canvas, in pixels (row-major)."""
        return self.layout.cell_origins(device) - self.margin

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, S, S) -> (B, n, C, side, side)``."""
        batch, channels = x.shape[:2]
        padded = F.pad(x, (self.margin,) * 4)
        regions = F.unfold(padded, self.side, stride=self.stride)  # (B, C * side^2, n)
        return regions.transpose(1, 2).reshape(batch, -1, channels, self.side, self.side)

    def paste_max(self, regions: torch.Tensor) -> torch.Tensor:
        """``(B, n, C, side, side) -> (B, C, S, S)``: the regions' maximum where they
        overlap, zero where none reaches (a scatter into the canvas: each region's pixels
        have fixed places)."""
        batch, n, channels = regions.shape[:3]
        size = self.layout.canvas + 2 * self.margin
        steps = torch.arange(self.side, device=regions.device)
        origins = self.layout.cell_origins(regions.device).long()  # in padded coordinates
        rows = origins[:, 0, None, None] + steps[None, :, None]  # (n, side, 1)
        cols = origins[:, 1, None, None] + steps[None, None, :]  # (n, 1, side)
        index = (rows * size + cols).flatten().expand(batch, channels, -1)
        values = regions.transpose(1, 2).reshape(batch, channels, -1)
        canvas = values.new_zeros(batch, channels, size * size)
        canvas = canvas.scatter_reduce(2, index, values, "amax", include_self=True)
        canvas = canvas.view(batch, channels, size, size)
        return canvas[..., self.margin : -self.margin, self.margin : -self.margin]

    def shifts(self, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``centres (B, n, 2)`` on the canvas -> the :func:`shift_matrices` of rows and of
        columns, each ``(B * n, side, g)``, that put each cell's glyph at its centre in the
        cell's region (and, transposed, read it back)."""
        corners = (centres - self.origins(centres.device) - self.layout.glyph / 2).flatten(0, 1)
        glyph = self.layout.glyph
        return (
            shift_matrices(corners[:, 0], self.side, glyph),
            shift_matrices(corners[:, 1], self.side, glyph),
        )


class CellEncoder(nn.Module):
    """``x (B, C, S, S) -> mu, logvar (B, D)``: a conv net down to the grid (stride
    ``S / cells``, each cell seeing its neighbours and theirs) gives every cell its presence
    and centre; a glyph encoder reads the ``g x g`` window at that centre for ``what``."""

    def __init__(
        self, layout: CellLayout, image_channels: int, channels: int, glyph_encoder: nn.Module
    ) -> None:
        super().__init__()
        self.layout = layout
        self.regions = CellRegions(layout)
        layers: list[nn.Module] = []
        width = channels
        for step in range(int(math.log2(layout.canvas // layout.cells))):
            out = min(channels * 2**step, 2 * channels)
            layers += [nn.Conv2d(image_channels if step == 0 else width, out, 3, 2, 1), nn.ELU()]
            width = out
        # a cell sees the cells around it (two 3x3 layers: the next but one too), so that a
        # digit near an edge is claimed by one cell
        layers += [nn.Conv2d(width, width, 3, 1, 1), nn.ELU()]
        layers += [nn.Conv2d(width, width, 3, 1, 1), nn.ELU(), nn.Conv2d(width, 6, 1)]
        self.grid = nn.Sequential(*layers)
        self.glyph_encoder = glyph_encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layout, (batch, n) = self.layout, (len(x), self.layout.cells**2)
        heads = self.grid(x).flatten(2).transpose(1, 2)  # (B, n, 6)
        mu_pw, logvar_pw = heads[..., :3], heads[..., 3:]
        rows, cols = self.regions.shifts(layout.centres(mu_pw[..., WHERE]))  # (B * n, side, g)
        regions = self.regions.cut(x.float()).flatten(0, 1)  # (B * n, C, side, side)
        windows = rows.transpose(1, 2)[:, None] @ regions @ cols[:, None]  # (B * n, C, g, g)
        mu_what, logvar_what = self.glyph_encoder(windows.to(x.dtype))
        mu = torch.cat([mu_pw, mu_what.view(batch, n, -1)], -1).flatten(1)
        logvar = torch.cat([logvar_pw, logvar_what.view(batch, n, -1)], -1).flatten(1)
        return mu, logvar


class ObjectCanvas(nn.Module):
    """``cells (B, n, per_cell)``, ``glyphs (B * n, C, g, g)`` logits -> ``logits (B, C, S,
    S)``: each cell's glyph placed at its centre, weighted by its presence; each pixel the
    strongest object's ink over the background. Out of training the centres are rounded
    to whole pixels."""

    def __init__(self, layout: CellLayout) -> None:
        super().__init__()
        self.layout = layout
        self.regions = CellRegions(layout)
        self.background = nn.Parameter(torch.tensor(-6.0))

    def forward(
        self, cells: torch.Tensor, glyphs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the logits and the objects' presence ``(B, cells, cells)``."""
        layout, (batch, n, _) = self.layout, cells.shape
        present = presence(cells[..., PRES].float())  # (B, n)
        centres = layout.centres(cells[..., WHERE])
        if not self.training:
            centres = centres.round()
        rows, cols = (m[:, None] for m in self.regions.shifts(centres))  # (B * n, 1, side, g)
        ink = torch.sigmoid(glyphs.float()) * present.flatten()[:, None, None, None]
        placed = rows @ ink @ cols.transpose(-1, -2)  # (B * n, C, side, side)
        objects = self.regions.paste_max(placed.view(batch, n, *placed.shape[1:]))
        # a pixel's ink: the background's, or else the strongest object's there (a second
        # object drawn over the first adds nothing: no reward for duplicates)
        background = torch.sigmoid(self.background.float())
        ink = background + (1 - background) * objects.clamp_max(1 - 1e-6)
        logits = torch.log(ink) - torch.log1p(-ink)
        return logits, present.view(batch, layout.cells, layout.cells)
