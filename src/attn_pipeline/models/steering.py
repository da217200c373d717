"""Edits of a spatial attention map at generation time (blog post, step 4).

An edit maps an attention map ``(B, 1, h, w)`` (a distribution over positions) to another;
the generator decodes with the edited map. Coordinates are image pixels, so an edit means
the same thing whatever resolution the map has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _renormalise(attention_map: torch.Tensor) -> torch.Tensor:
    return attention_map / attention_map.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def rectangle_mask(
    size: int, image_size: int, *, top: int, bottom: int, left: int, right: int
) -> torch.Tensor:
    """``(size, size)`` bool mask of the map cells whose centres fall in the pixel rectangle
    ``[top, bottom) x [left, right)`` of an ``image_size`` square image."""
    centres = (torch.arange(size) + 0.5) * image_size / size
    rows = (centres >= top) & (centres < bottom)
    cols = (centres >= left) & (centres < right)
    return rows[:, None] & cols[None, :]


@dataclass(frozen=True)
class _PixelRectangle:
    """A pixel rectangle ``[top, bottom) x [left, right)`` of an ``image_size`` square image."""

    top: int
    bottom: int
    left: int
    right: int
    image_size: int

    def cells(self, attention_map: torch.Tensor) -> torch.Tensor:
        """``(h, w)`` bool mask of the map's cells inside the rectangle."""
        return rectangle_mask(
            attention_map.shape[-1],
            self.image_size,
            top=self.top,
            bottom=self.bottom,
            left=self.left,
            right=self.right,
        ).to(attention_map.device)


@dataclass(frozen=True, kw_only=True)
class ScaleRectangle(_PixelRectangle):
    """Multiply the weights inside the rectangle by ``factor``, then renormalise."""

    factor: float

    def __call__(self, attention_map: torch.Tensor) -> torch.Tensor:
        scale = torch.where(self.cells(attention_map), self.factor, 1.0)
        return _renormalise(attention_map * scale.to(attention_map.dtype))


@dataclass(frozen=True)
class MoveToRectangle(_PixelRectangle):
    """Replace the map by uniform weight on the cells inside the rectangle: content that
    follows the map goes there."""

    def __call__(self, attention_map: torch.Tensor) -> torch.Tensor:
        mask = self.cells(attention_map)
        if not mask.any():
            raise ValueError(
                f"the box rows [{self.top}, {self.bottom}) x cols [{self.left}, {self.right}) "
                f"covers no cell of the {attention_map.shape[-1]}x{attention_map.shape[-1]} "
                "map: draw a larger box"
            )
        return _renormalise(mask.to(attention_map.dtype).expand_as(attention_map).clone())


@dataclass(frozen=True)
class ReplaceMap:
    """Replace the map by a given one (any grid, resized to the map's), normalised."""

    values: tuple[tuple[float, ...], ...]

    def __call__(self, attention_map: torch.Tensor) -> torch.Tensor:
        given = torch.tensor(self.values, dtype=attention_map.dtype, device=attention_map.device)
        resized = F.interpolate(given[None, None], size=attention_map.shape[-2:], mode="area")
        return _renormalise(resized.clamp_min(0).expand_as(attention_map))


@dataclass(frozen=True)
class TransplantMap:
    """Replace each sample's map by another one (say, the map inferred from a test image).

    ``maps (B, 1, h, w)``, one per sample, each a distribution over positions.
    """

    maps: torch.Tensor

    def __call__(self, attention_map: torch.Tensor) -> torch.Tensor:
        if self.maps.shape != attention_map.shape:
            raise ValueError(
                f"transplanted maps {tuple(self.maps.shape)} do not match the generator's "
                f"{tuple(attention_map.shape)}"
            )
        return _renormalise(self.maps.to(attention_map))
