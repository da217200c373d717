"""Steering by attention, measured: does content go where the edited map puts weight?

The same prior samples are decoded before and after each edit of a fixed set: every half of
the image (top, bottom, left, right) emphasised (its map weights multiplied by
``emphasis``, then renormalised) and suppressed (multiplied by ``suppression``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attn_pipeline.models import VAE
from attn_pipeline.models.classifier import FeatureClassifier
from attn_pipeline.models.steering import MoveToRectangle, ScaleRectangle, rectangle_mask
from attn_pipeline.models.where import ink_centroid

from .generation import classifier_view

#: The benchmark's edits are part of its definition (figures stay comparable across runs):
#: a half's map weights multiplied by EMPHASIS or by SUPPRESSION, then renormalised.
EMPHASIS = 8.0
SUPPRESSION = 0.05

#: The edited regions: each half of the image as (top, bottom, left, right) in units of the
#: image's side (a 28x28 image's top half is rows [0, 14), columns [0, 28)).
HALVES: dict[str, tuple[float, float, float, float]] = {
    "top": (0, 0.5, 0, 1),
    "bottom": (0.5, 1, 0, 1),
    "left": (0, 1, 0, 0.5),
    "right": (0, 1, 0.5, 1),
}


def half_rectangle(half: str, image_size: int) -> dict[str, int]:
    """``half`` of an ``image_size`` square image as pixel bounds ``top, bottom, left, right``."""
    return pixel_box(HALVES[half], image_size)


def half_edit(half: str, factor: float, image_size: int) -> ScaleRectangle:
    """The edit that multiplies the map inside ``half`` by ``factor`` and renormalises."""
    return ScaleRectangle(**half_rectangle(half, image_size), factor=factor, image_size=image_size)


def region_mask(half: str, image_size: int) -> torch.Tensor:
    """``(image_size, image_size)`` bool mask of the pixels of ``half``."""
    # at the image's own resolution every cell is a pixel
    return rectangle_mask(image_size, image_size, **half_rectangle(half, image_size))


def ink_share(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``images (B, C, H, W)``, ``mask (H, W)`` -> ``(B,)``: each image's share of its ink
    (sum of intensities) inside the region."""
    ink = images.sum(1)
    return ink[:, mask].sum(1) / ink.flatten(1).sum(1).clamp_min(1e-8)


def ink_share_percentiles(
    images: torch.Tensor, percentiles: tuple[float, ...] = (5, 50, 95, 99)
) -> dict[str, dict[float, float]]:
    """The data's own bound on steering by fading: for each half of the image, the given
    percentiles of its share of the ink over ``images (B, C, H, W)``. A steered sample whose
    half holds more than the data's top percentiles is no longer like the data."""
    size = images.shape[-1]
    return {
        half: {
            q: float(v)
            for q, v in zip(
                percentiles,
                torch.quantile(
                    ink_share(images, region_mask(half, size)), torch.tensor(percentiles) / 100
                ),
                strict=True,
            )
        }
        for half in HALVES
    }


@dataclass(frozen=True)
class EditEffect:
    """What one edit did to a batch of samples, as sums over samples (to pool batches)."""

    ink_share_change: float  # sum over samples of (share after - share before)
    change_inside: float  # sum over samples of the mean |pixel change| inside the region
    change_outside: float  # ... and outside it


def edit_effect(before: torch.Tensor, after: torch.Tensor, mask: torch.Tensor) -> EditEffect:
    """Compare images ``(B, C, H, W)`` before and after an edit of the region ``mask (H, W)``.

    The ink share is the fraction of an image's total intensity inside the region.
    """
    share_before, share_after = ink_share(before, mask), ink_share(after, mask)
    change = (after - before).abs().mean(1)  # (B, H, W)
    return EditEffect(
        ink_share_change=float((share_after - share_before).sum()),
        change_inside=float(change[:, mask].mean(1).sum()),
        change_outside=float(change[:, ~mask].mean(1).sum()),
    )


def steerable(model: VAE) -> bool:
    """Whether the model's generator takes an editable map over image positions."""
    return model.generator.spatial_map is not None


@torch.no_grad()
def steering_metrics(
    model: VAE,
    extractor: FeatureClassifier,
    *,
    n: int,
    seed: int,
    emphasis: float = EMPHASIS,
    suppression: float = SUPPRESSION,
    batch_size: int = 1000,
) -> dict[str, float]:
    """The ``steer_*`` metrics (names without ``test/``) over ``n`` prior samples.

    - ``steer_emphasis_ink_share``, ``steer_suppression_ink_share``: the mean change of the
      edited half's share of the image's ink (0.25 = 25 points), over samples and halves;
    - ``steer_suppression_change_inside`` / ``_outside``: the mean absolute pixel change
      inside and outside the suppressed half, and ``steer_suppression_locality``, their
      ratio (``steer_emphasis_locality`` likewise; emphasis with renormalisation also lowers
      the map outside the half, so suppression is the cleaner test of locality);
    - ``steer_confidence_ratio``: the extractor's mean top-class probability on steered
      samples over that on the unsteered ones; ``steer_class_kept``: how often the
      predicted class is the unsteered sample's.

    Raises ``ValueError`` for a model without an editable map.
    """
    if not steerable(model):
        raise ValueError("steering metrics need a variant whose generator takes a spatial map")
    device = next(model.parameters()).device
    noise = torch.Generator(device=device).manual_seed(seed)
    kinds = {"emphasis": emphasis, "suppression": suppression}
    image_size = model.image_shape[-1]
    totals = {(kind, key): 0.0 for kind in kinds for key in EditEffect.__dataclass_fields__}
    confidence_before = confidence_after = kept = 0.0
    n_steered = 0
    for start in range(0, n, batch_size):
        z = torch.randn(
            min(batch_size, n - start), model.latent_dim, generator=noise, device=device
        )
        before = torch.sigmoid(model.decode(z).logits)
        view_before = classifier_view(extractor, before)
        top_before = view_before.probabilities.max(1)
        confidence_before += float(top_before.values.sum())
        for kind, factor in kinds.items():
            for half in HALVES:
                edit = half_edit(half, factor, image_size)
                after = torch.sigmoid(model.decode(z, edit).logits)
                effect = edit_effect(before, after, region_mask(half, image_size).to(device))
                for key in EditEffect.__dataclass_fields__:
                    totals[(kind, key)] += getattr(effect, key)
                top_after = classifier_view(extractor, after).probabilities.max(1)
                confidence_after += float(top_after.values.sum())
                kept += float((top_after.indices == top_before.indices).sum())
                n_steered += len(z)
    per_edit = n * len(HALVES)
    metrics: dict[str, float] = {}
    for kind in kinds:
        inside = totals[(kind, "change_inside")] / per_edit
        outside = totals[(kind, "change_outside")] / per_edit
        metrics[f"steer_{kind}_ink_share"] = totals[(kind, "ink_share_change")] / per_edit
        metrics[f"steer_{kind}_change_inside"] = inside
        metrics[f"steer_{kind}_change_outside"] = outside
        metrics[f"steer_{kind}_locality"] = inside / max(outside, 1e-12)
    metrics["steer_confidence_ratio"] = (confidence_after / n_steered) / max(
        confidence_before / n, 1e-12
    )
    metrics["steer_class_kept"] = kept / n_steered
    return metrics


#: The boxes of the move benchmark: each quadrant of the image, as (top, bottom, left,
#: right) in units of the image's side.
QUADRANTS: dict[str, tuple[float, float, float, float]] = {
    "top_left": (0, 0.5, 0, 0.5),
    "top_right": (0, 0.5, 0.5, 1),
    "bottom_left": (0.5, 1, 0, 0.5),
    "bottom_right": (0.5, 1, 0.5, 1),
}


def pixel_box(box: tuple[float, float, float, float], image_size: int) -> dict[str, int]:
    """A box in units of the image's side as pixel bounds ``top, bottom, left, right``."""
    top, bottom, left, right = (round(edge * image_size) for edge in box)
    return {"top": top, "bottom": bottom, "left": left, "right": right}


@torch.no_grad()
def move_metrics(
    model: VAE, extractor: FeatureClassifier, *, n: int, seed: int, batch_size: int = 1000
) -> dict[str, float]:
    """The ``move_*`` metrics (names without ``test/``) over ``n`` prior samples, each
    decoded unsteered and with its map replaced by each quadrant (:data:`QUADRANTS`; a box
    of uniform weight):

    - ``move_in_box``: how often the steered image's ink centroid lies inside the box;
    - ``move_ink_share``: the mean share of the steered image's ink inside the box;
    - ``move_confidence_ratio``: the extractor's mean top-class probability on steered
      samples over that on the unsteered ones; ``move_class_kept``: how often the
      predicted class is the unsteered sample's (the same digit, moved).

    Raises ``ValueError`` for a model without an editable map.
    """
    if not steerable(model):
        raise ValueError("move metrics need a variant whose generator takes a spatial map")
    device = next(model.parameters()).device
    size = model.image_shape[-1]
    noise = torch.Generator(device=device).manual_seed(seed)
    in_box = share = confidence_before = confidence_after = kept = 0.0
    for start in range(0, n, batch_size):
        z = torch.randn(
            min(batch_size, n - start), model.latent_dim, generator=noise, device=device
        )
        before = torch.sigmoid(model.decode(z).logits)
        top_before = classifier_view(extractor, before).probabilities.max(1)
        confidence_before += float(top_before.values.sum())
        for box in QUADRANTS.values():
            bounds = pixel_box(box, size)
            edit = MoveToRectangle(**bounds, image_size=size)
            after = torch.sigmoid(model.decode(z, edit).logits)
            mask = rectangle_mask(size, size, **bounds).to(device)
            row, col = ink_centroid(after).unbind(1)
            inside = (
                (row >= bounds["top"]) & (row < bounds["bottom"])
                & (col >= bounds["left"]) & (col < bounds["right"])
            )  # fmt: skip
            in_box += float(inside.sum())
            share += float(ink_share(after, mask).sum())
            top_after = classifier_view(extractor, after).probabilities.max(1)
            confidence_after += float(top_after.values.sum())
            kept += float((top_after.indices == top_before.indices).sum())
    moved = n * len(QUADRANTS)
    return {
        "move_in_box": in_box / moved,
        "move_ink_share": share / moved,
        "move_confidence_ratio": (confidence_after / moved) / max(confidence_before / n, 1e-12),
        "move_class_kept": kept / moved,
    }
