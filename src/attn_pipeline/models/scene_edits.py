"""Edits of an ``objects`` model's map, object by object: move one to a box, remove one,
add one, swap two. Each takes codes ``z (B, D)`` and returns edited codes; decoding them
(``model.decode``) draws the edited scenes, every other object's cell unchanged.

An object is a cell whose ``z_pres`` is above the threshold
(:data:`~attn_pipeline.models.objects.PRESENCE_THRESHOLD`). The page and the benchmark
(:mod:`attn_pipeline.metrics.scenes`) both edit through these functions.
"""

from __future__ import annotations

import torch

from .objects import PRES, PRESENCE_THRESHOLD, WHAT, WHERE, CellLayout

#: ``z_pres`` of a removed object and of an added one: far enough past the threshold that
#: the relaxed presence is 0 or 1 to within 1e-6.
ABSENT, PRESENT = -3.0, 5.0


def present_cells(layout: CellLayout, z: torch.Tensor) -> torch.Tensor:
    """``z (B, D) -> (B, n)`` bool: which cells hold an object."""
    return layout.split(z)[..., PRES] > PRESENCE_THRESHOLD


def object_centres(layout: CellLayout, z: torch.Tensor) -> torch.Tensor:
    """``z (B, D) -> (B, n, 2)``: each cell's glyph centre, in whole pixels (as drawn)."""
    return layout.centres(layout.split(z)[..., WHERE]).round()


def _rows(z: torch.Tensor, index: torch.Tensor | int) -> torch.Tensor:
    index = torch.as_tensor(index, device=z.device)
    return index.expand(len(z)) if index.dim() == 0 else index


def move(
    layout: CellLayout, z: torch.Tensor, cell: torch.Tensor | int, centre: torch.Tensor
) -> torch.Tensor:
    """Move each row's object of ``cell (B,)`` so that its glyph is centred at ``centre
    (B, 2)`` pixels (rounded to whole pixels): its code goes to the cell holding
    ``centre``, which must be empty or its own. Raises ``ValueError`` where the target cell
    holds another object."""
    cells = layout.split(z).clone()
    rows = torch.arange(len(z), device=z.device)
    source = _rows(z, cell)
    centre = centre.round()
    target = layout.cell_of(centre)
    occupied = (cells[rows, target, PRES] > PRESENCE_THRESHOLD) & (target != source)
    if bool(occupied.any()):
        raise ValueError(
            "the box's cell holds another object: remove it first, or move this one elsewhere"
        )
    moved = cells[rows, source].clone()
    moved[:, WHERE] = layout.code(centre, target)
    cells[rows, source, PRES] = ABSENT
    cells[rows, target] = moved
    return cells.flatten(1)


def remove(layout: CellLayout, z: torch.Tensor, cell: torch.Tensor | int) -> torch.Tensor:
    """Remove each row's object of ``cell (B,)``."""
    cells = layout.split(z).clone()
    cells[torch.arange(len(z), device=z.device), _rows(z, cell), PRES] = ABSENT
    return cells.flatten(1)


def add(
    layout: CellLayout, z: torch.Tensor, centre: torch.Tensor, what: torch.Tensor
) -> torch.Tensor:
    """Add to each row an object of appearance ``what (B, d)`` (a fresh draw from the prior,
    or another object's) centred at ``centre (B, 2)``; its cell must be empty. Raises
    ``ValueError`` where it is not."""
    cells = layout.split(z).clone()
    rows = torch.arange(len(z), device=z.device)
    centre = centre.round()
    target = layout.cell_of(centre)
    if bool((cells[rows, target, PRES] > PRESENCE_THRESHOLD).any()):
        raise ValueError("the box's cell holds an object already: move or remove it first")
    cells[rows, target, PRES] = PRESENT
    cells[rows, target, WHERE] = layout.code(centre, target)
    cells[rows, target, WHAT] = what
    return cells.flatten(1)


def swap(
    layout: CellLayout, z: torch.Tensor, first: torch.Tensor | int, second: torch.Tensor | int
) -> torch.Tensor:
    """Swap the appearances of each row's objects in cells ``first`` and ``second``: each
    is drawn where the other was."""
    cells = layout.split(z).clone()
    rows = torch.arange(len(z), device=z.device)
    a, b = _rows(z, first), _rows(z, second)
    what_a = cells[rows, a, WHAT].clone()
    cells[rows, a, WHAT] = cells[rows, b, WHAT]
    cells[rows, b, WHAT] = what_a
    return cells.flatten(1)
