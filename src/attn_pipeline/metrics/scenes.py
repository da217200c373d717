"""Scenes, measured object by object: does the ``objects`` model count the digits, draw
each one's class, and do its edits (move, remove, add, swap) change that object alone?

On real test scenes (their posterior means, drawn as the model draws: whole pixels) and on
prior samples. Classes come from an MNIST classifier (the shipped reference extractor) on
the ``g x g`` window at each object; counts, after an edit, from the model's own encoder
reading the edited image back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from attn_pipeline.models import VAE
from attn_pipeline.models.classifier import FeatureClassifier
from attn_pipeline.models.objects import WHAT, CellLayout
from attn_pipeline.models.scene_edits import add, move, object_centres, present_cells, remove, swap
from attn_pipeline.models.where import ink_centroid


def layout_of(model: VAE) -> CellLayout:
    """The grid of an ``objects`` model; ``ValueError`` for any other variant."""
    objects = getattr(model.generator, "objects", None)
    if objects is None:
        raise ValueError("scene metrics need the objects variant (a grid of objects)")
    return objects.layout


def windows_at(images: torch.Tensor, centres: torch.Tensor, side: int) -> torch.Tensor:
    """``images (B, C, S, S)``, whole-pixel ``centres (B, 2)`` -> ``(B, C, side, side)``:
    the window centred there (zeros beyond the image)."""
    half = side // 2
    padded = F.pad(images, (half,) * 4)
    steps = torch.arange(side, device=images.device)
    top_left = centres.long()  # the window's top-left in padded coordinates
    rows = (top_left[:, 0:1] + steps)[:, None, :, None]  # (B, 1, side, 1)
    cols = (top_left[:, 1:2] + steps)[:, None, None, :]  # (B, 1, 1, side)
    batch = torch.arange(len(images), device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def outside_windows(size: int, centres: list[torch.Tensor], side: int) -> torch.Tensor:
    """``(B, size, size)`` bool: the pixels outside every ``side`` window centred at any of
    ``centres`` (each ``(B, 2)``, whole pixels)."""
    pixel = torch.arange(size, device=centres[0].device)
    outside = torch.ones(len(centres[0]), size, size, dtype=torch.bool, device=pixel.device)
    for centre in centres:
        top, left = (centre.long() - side // 2).unbind(1)
        in_rows = (pixel[None] >= top[:, None]) & (pixel[None] < top[:, None] + side)
        in_cols = (pixel[None] >= left[:, None]) & (pixel[None] < left[:, None] + side)
        outside &= ~(in_rows[:, :, None] & in_cols[:, None, :])
    return outside


def _draw(model: VAE, z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(model.decode(z).logits)


def _count(model: VAE, layout: CellLayout, images: torch.Tensor) -> torch.Tensor:
    """The number of objects the encoder finds in ``images`` (at its posterior mean)."""
    mu, _ = model.encode(images)
    return present_cells(layout, mu).sum(1)


def _classes(extractor: FeatureClassifier, images: torch.Tensor, centres: torch.Tensor, side: int):
    return extractor(windows_at(images, centres, side)).argmax(1)


def choose_object(mask: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    """``mask (B, n)`` bool -> ``(B,)``: a seeded random True cell of each row (rows with
    none: any)."""
    scores = torch.rand(mask.shape, generator=noise, device=mask.device) + mask.float()
    return scores.argmax(1)


def emptiest_cell(
    layout: CellLayout, present: torch.Tensor, centres: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``present (B, n)`` and ``centres (B, n, 2)``: the empty cell farthest
    from every object, as the centre in it where a whole glyph stays on the canvas ``(B,
    2)`` and the box of a cell's size centred there ``(B, 4)`` top, bottom, left, right."""
    cell_centres = layout.cell_origins(centres.device) + layout.cell_side / 2  # (n, 2)
    distance = (cell_centres[None, :, None] - centres[:, None]).norm(dim=-1)  # (B, n, n)
    distance = distance.masked_fill(~present[:, None, :], float("inf")).amin(2)
    cell = distance.masked_fill(present, -1.0).argmax(1)
    half = layout.glyph / 2
    centre = cell_centres[cell].clamp(half, layout.canvas - half).floor()
    # the box asked for: a cell's size, centred where the object goes (a cell at the
    # canvas's edge has its centre moved in, so that a whole glyph stays on the canvas)
    reach = layout.cell_side / 2
    box = torch.stack(
        [centre[:, 0] - reach, centre[:, 0] + reach, centre[:, 1] - reach, centre[:, 1] + reach], 1
    )
    return centre, box


def _in_box(points: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    return (
        (points[:, 0] >= box[:, 0]) & (points[:, 0] < box[:, 1])
        & (points[:, 1] >= box[:, 2]) & (points[:, 1] < box[:, 3])
    )  # fmt: skip


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def edit_metrics(
    model: VAE, extractor: FeatureClassifier, z: torch.Tensor, *, seed: int
) -> dict[str, float]:
    """The edit benchmark on codes ``z (B, D)``: in every scene with an object, one
    (seeded) is moved to the empty cell farthest from the objects, removed, and copied
    there (added); in every scene with two, two are swapped. Names without a prefix:

    - ``move_in_box``: the moved object's ink centroid (its ink: the edited image less the
      image without it) in the target cell; ``move_class_kept``: the classifier's class on
      its new window equals that on its old one; ``move_change_outside``: the mean absolute
      pixel change outside the old and new windows (the other objects);
    - ``remove_count``, ``add_count``: how often the encoder counts one object fewer / one
      more in the edited image; ``remove_change_outside``, ``add_change_outside``: as the
      move's; ``add_in_box``, ``add_class_kept``: as the move's, for the copy;
    - ``swap_class_kept``: how often both swapped places show the other's former class;
    - ``edited_scenes``: the scenes with an object (the others are not edited).
    """
    layout = layout_of(model)
    was_training = model.training
    model.eval()
    noise = torch.Generator(device=z.device).manual_seed(seed)
    tally = _Tally()
    for rows in _batches(len(z), 500):
        present = present_cells(layout, z[rows])
        keep = present.any(1)
        if bool(keep.any()):
            tally.add("edited_scenes", torch.ones(int(keep.sum())))
            _one_object_edits(model, extractor, z[rows][keep], present[keep], noise, tally)
            _swaps(model, extractor, z[rows][keep], present[keep], noise, tally)
    model.train(was_training)
    figures = tally.means()
    figures["edited_scenes"] = tally.sums["edited_scenes"]
    return figures


class _Tally:
    """Running sums and counts of per-scene figures."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, values: torch.Tensor) -> None:
        self.sums[name] += float(values.float().sum())
        self.counts[name] += len(values)

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / max(self.counts[name], 1) for name in self.sums}


def _one_object_edits(
    model: VAE,
    extractor: FeatureClassifier,
    codes: torch.Tensor,
    present: torch.Tensor,
    noise: torch.Generator,
    tally: _Tally,
) -> None:
    """Move, remove and add (a copy of) one seeded object of each scene."""
    layout = layout_of(model)
    side, size = layout.glyph, layout.canvas
    batch = torch.arange(len(codes), device=codes.device)
    centres = object_centres(layout, codes)
    before = _draw(model, codes)
    count_before = _count(model, layout, before)
    cell = choose_object(present, noise)
    old_centre = centres[batch, cell]
    class_before = _classes(extractor, before, old_centre, side)
    new_centre, box = emptiest_cell(layout, present, centres)

    without = _draw(model, remove(layout, codes, cell))
    tally.add("remove_count", _count(model, layout, without) == count_before - 1)
    outside_old = outside_windows(size, [old_centre], side)
    tally.add("remove_change_outside", _change_outside(before, without, outside_old))

    moved = _draw(model, move(layout, codes, cell, new_centre))
    own_ink = (moved - without).clamp_min(0)  # the moved object's ink alone
    tally.add("move_in_box", _in_box(ink_centroid(own_ink), box))
    tally.add("move_class_kept", _classes(extractor, moved, new_centre, side) == class_before)
    outside_both = outside_windows(size, [old_centre, new_centre], side)
    tally.add("move_change_outside", _change_outside(before, moved, outside_both))

    what = layout.split(codes)[batch, cell, WHAT]
    added = _draw(model, add(layout, codes, new_centre, what))
    tally.add("add_count", _count(model, layout, added) == count_before + 1)
    tally.add("add_in_box", _in_box(ink_centroid((added - before).clamp_min(0)), box))
    tally.add("add_class_kept", _classes(extractor, added, new_centre, side) == class_before)
    outside_new = outside_windows(size, [new_centre], side)
    tally.add("add_change_outside", _change_outside(before, added, outside_new))


def _swaps(
    model: VAE,
    extractor: FeatureClassifier,
    codes: torch.Tensor,
    present: torch.Tensor,
    noise: torch.Generator,
    tally: _Tally,
) -> None:
    """Swap two seeded objects of each scene that has two: each place should then show the
    other's former class."""
    layout = layout_of(model)
    pairs = present.sum(1) >= 2
    if not bool(pairs.any()):
        return
    codes, present = codes[pairs], present[pairs]
    batch = torch.arange(len(codes), device=codes.device)
    first = choose_object(present, noise)
    others = present.clone()
    others[batch, first] = False
    second = choose_object(others, noise)
    centres = object_centres(layout, codes)
    at_first, at_second = centres[batch, first], centres[batch, second]
    before = _draw(model, codes)
    swapped = _draw(model, swap(layout, codes, first, second))
    side = layout.glyph
    was_first = _classes(extractor, before, at_first, side)
    was_second = _classes(extractor, before, at_second, side)
    now_first = _classes(extractor, swapped, at_first, side)
    now_second = _classes(extractor, swapped, at_second, side)
    tally.add("swap_class_kept", (now_first == was_second) & (now_second == was_first))


def _change_outside(before: torch.Tensor, after: torch.Tensor, outside: torch.Tensor):
    """``(B,)``: each image's mean absolute change over its pixels in ``outside``."""
    change = (after - before).abs().sum(1)  # (B, S, S)
    return (change * outside).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp_min(1)


@torch.no_grad()
def scene_metrics(
    model: VAE,
    extractor: FeatureClassifier,
    test_set: dict[str, torch.Tensor],
    *,
    n_prior: int,
    seed: int,
) -> dict[str, float]:
    """The ``scene_*`` metrics (names without ``test/``) of an ``objects`` model:

    - ``scene_count_accuracy``: how often the encoder's count of a test scene (objects
      whose posterior-mean ``z_pres`` passes the threshold) is its number of digits;
    - ``scene_class_accuracy``: how often the classifier, on the window at each digit of
      the scene's reconstruction, names its class; ``scene_class_accuracy_data``: the same
      on the test scenes themselves (the classifier's ceiling with neighbours' ink);
    - ``scene_<edit>`` on the test scenes' posterior means and ``scene_prior_<edit>`` on
      ``n_prior`` prior samples: :func:`edit_metrics`; ``scene_prior_mean_count``: the
      mean number of objects in a prior sample.
    """
    layout = layout_of(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images, objects = test_set["images"], test_set["objects"]
    half = layout.glyph // 2
    correct_count = right = right_data = n_objects = 0
    codes = []
    for rows in _batches(len(images), 500):
        x = images[rows].to(device)
        mu, _ = model.encode(x)
        codes.append(mu)
        correct_count += int((present_cells(layout, mu).sum(1) == test_set["labels"][rows]).sum())
        drawn = _draw(model, mu)
        for slot in range(objects.shape[1]):
            there = objects[rows, slot, 0] >= 0
            if not bool(there.any()):
                continue
            centre = (objects[rows, slot, 1:][there] + half).to(device)
            label = objects[rows, slot, 0][there].to(device)
            right += int((_classes(extractor, drawn[there], centre, layout.glyph) == label).sum())
            right_data += int((_classes(extractor, x[there], centre, layout.glyph) == label).sum())
            n_objects += int(there.sum())
    metrics = {
        "scene_count_accuracy": correct_count / len(images),
        "scene_class_accuracy": right / max(n_objects, 1),
        "scene_class_accuracy_data": right_data / max(n_objects, 1),
    }
    metrics |= {
        f"scene_{k}": v
        for k, v in edit_metrics(model, extractor, torch.cat(codes), seed=seed).items()
    }
    noise = torch.Generator(device=device).manual_seed(seed)
    prior = torch.randn(n_prior, model.latent_dim, generator=noise, device=device)
    metrics["scene_prior_mean_count"] = float(present_cells(layout, prior).sum(1).float().mean())
    metrics |= {
        f"scene_prior_{k}": v for k, v in edit_metrics(model, extractor, prior, seed=seed).items()
    }
    model.train(was_training)
    return metrics
