"""Images from each trained variant: prior samples, reconstructions, interpolations."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from attn_pipeline.metrics.scenes import choose_object, emptiest_cell, layout_of
from attn_pipeline.metrics.steering import (
    EMPHASIS,
    HALVES,
    QUADRANTS,
    SUPPRESSION,
    half_edit,
    pixel_box,
)
from attn_pipeline.models import VAE, load_checkpoint, scene_edits
from attn_pipeline.models.objects import WHAT
from attn_pipeline.models.scene_edits import object_centres, present_cells
from attn_pipeline.models.steering import (
    MoveToRectangle,
    ReplaceMap,
    ScaleRectangle,
    TransplantMap,
)
from attn_pipeline.models.vae import AttentionEdit
from attn_pipeline.spec.config import GenerateConfig, ScaleRectangleEdit


def _grid(images: torch.Tensor, nrow: int) -> Image.Image:
    """``(N, C, H, W)`` in [0, 1] -> one PIL image, ``nrow`` images per row."""
    # imported here: torchvision's package import (its model zoo) costs seconds on every
    # kedro command, which builds the pipelines and so imports this module
    from torchvision.transforms.functional import to_pil_image  # noqa: PLC0415
    from torchvision.utils import make_grid  # noqa: PLC0415

    return to_pil_image(make_grid(images.clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0))


@torch.no_grad()
def render_images(
    checkpoint: dict[str, Any], test_set: dict[str, torch.Tensor], config: GenerateConfig
) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Render three grids from one variant.

    Returns:
        ``samples``: decoded draws from the prior N(0, I), 8 per row;
        ``reconstructions``: test images (odd rows) above their reconstructions from the
        posterior mean (even rows);
        ``interpolations``: one row per pair of test images, decoding evenly spaced points
        on the line between their posterior means.
    """
    model, model_config = load_checkpoint(checkpoint, for_split=test_set)
    noise = torch.Generator().manual_seed(config.seed)
    z = torch.randn(config.n_samples, model.latent_dim, generator=noise)
    samples = torch.sigmoid(model.decode(z).logits)

    images = test_set["images"]
    pick = torch.randperm(len(images), generator=noise)
    originals = images[pick[: config.n_reconstructions]]
    recon = torch.sigmoid(model(originals, sample=False).logits)
    per_row = 8
    rows = []
    for start in range(0, len(originals), per_row):
        rows += [originals[start : start + per_row], recon[start : start + per_row]]
    reconstructions = torch.cat(rows)

    ends = images[pick[: 2 * config.n_interpolations]]
    mu, _ = model.encode(ends)
    a, b = mu[0::2], mu[1::2]  # (P, D) each
    t = torch.linspace(0, 1, config.interpolation_steps).view(1, -1, 1)  # (1, S, 1)
    path = (1 - t) * a.unsqueeze(1) + t * b.unsqueeze(1)  # (P, S, D)
    strip = torch.sigmoid(model.decode(path.flatten(0, 1)).logits)  # (P*S, C, H, W)
    return (
        _grid(samples, per_row),
        _grid(reconstructions, per_row),
        _grid(strip, config.interpolation_steps),
    )


def _show(ax, image: torch.Tensor) -> None:
    """Draw ``image (C, H, W)`` in [0, 1]: grey for one channel, colour for three."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1))


def _beside_their_maps(images: torch.Tensor, maps: torch.Tensor, gap: int = 2) -> np.ndarray:
    """``images (B, C, H, W)`` in [0, 1], each followed by its map ``(B, 1, h, w)`` upsampled
    to ``(H, W)`` and coloured (inferno, from 0 to the map's own maximum), side by side with
    ``gap`` white columns between pairs: ``(H, B * (2W + gap), 3)`` RGB."""
    size = images.shape[-2:]
    pictures = images.clamp(0, 1).expand(-1, 3, -1, -1)  # grey to RGB; colour stays
    upsampled = F.interpolate(maps.float(), size=size, mode="nearest")[:, 0]  # (B, H, W)
    peak = upsampled.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    coloured = torch.from_numpy(colormaps["inferno"]((upsampled / peak).numpy())[..., :3])
    white = torch.ones(len(images), 3, size[0], gap)
    pairs = torch.cat([pictures, coloured.permute(0, 3, 1, 2).float(), white], dim=3)
    return pairs.permute(2, 0, 3, 1).flatten(1, 2)[:, :-gap].numpy()


def _overlay(ax, image: torch.Tensor, attention_map: torch.Tensor, title: str) -> None:
    """Draw ``attention_map (1, h, w)`` as a heat map over ``image (C, H, W)``."""
    upsampled = F.interpolate(attention_map[None], size=image.shape[-2:], mode="nearest")[0, 0]
    _show(ax, image)
    ax.imshow(upsampled, cmap="inferno", alpha=0.55)
    ax.set_title(title, fontsize=7)


def _strip(ax, weights: torch.Tensor, title: str) -> None:
    """Draw a vector of attention weights ``(D,)`` as a one-row heat map."""
    ax.imshow(weights[None], cmap="inferno", aspect="auto")
    ax.set_title(title, fontsize=7)


@torch.no_grad()
def plot_attention_maps(
    checkpoint: dict[str, Any], test_set: dict[str, torch.Tensor], config: GenerateConfig
) -> Figure:
    """Test images, their reconstructions, and every attention map the variant produces.

    Maps over positions ``(1, h, w)`` are drawn as heat maps over the input image; vectors
    (the ``latent`` variant's map over latent dimensions, CBAM's channel gate) as strips.
    """
    model, model_config = load_checkpoint(checkpoint, for_split=test_set)
    noise = torch.Generator().manual_seed(config.seed)
    images = test_set["images"]
    x = images[torch.randperm(len(images), generator=noise)[: config.n_attention_examples]]
    out = model(x, sample=False)
    recon = torch.sigmoid(out.logits)
    names = sorted(out.attention)
    n_cols = 2 + len(names)
    figure = Figure(figsize=(1.3 * n_cols, 1.3 * len(x)), layout="constrained")
    axes = figure.subplots(len(x), n_cols, squeeze=False)
    for row in range(len(x)):
        _show(axes[row, 0], x[row])
        axes[row, 0].set_title("input", fontsize=7)
        _show(axes[row, 1], recon[row])
        axes[row, 1].set_title("reconstruction", fontsize=7)
        for col, name in enumerate(names, start=2):
            value = out.attention[name][row]
            if value.dim() == 3:
                _overlay(axes[row, col], x[row], value, name)
            else:
                _strip(axes[row, col], value, name)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    title = (
        f"{model_config.variant}: attention maps"
        if names
        else (f"{model_config.variant}: this variant has no attention maps")
    )
    figure.suptitle(title, fontsize=9)
    return figure


def steering_edit(config: GenerateConfig, image_size: int) -> AttentionEdit:
    """The attention edit that ``generate.steering`` describes, for ``image_size`` square
    images; a rectangle reaching outside them is refused, naming the bounds."""
    edit = config.steering
    if isinstance(edit, ScaleRectangleEdit):
        top, bottom, left, right = edit.pixels(image_size)
        return ScaleRectangle(
            top=top,
            bottom=bottom,
            left=left,
            right=right,
            factor=edit.factor,
            image_size=image_size,
        )
    return ReplaceMap(values=tuple(tuple(row) for row in edit.values))


@torch.no_grad()
def steering_rows(
    model: VAE,
    z: torch.Tensor,
    donors: torch.Tensor,
    custom_edit: AttentionEdit,
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The same samples ``z (B, D)`` decoded unsteered and under each edit.

    Rows: unsteered; each half emphasised, each half suppressed (the steering benchmark's
    edits); the map replaced by each quadrant (the move benchmark's); the map inferred from
    another image (``donors (B, C, H, W)``, one per sample) transplanted; ``custom_edit``.
    Returns ``(label, images (B, C, H, W), maps (B, 1, h, w))`` rows.
    """
    edits: list[tuple[str, AttentionEdit | None]] = [("unsteered", None)]
    size = model.image_shape[-1]
    for kind, factor in (("emphasised", EMPHASIS), ("suppressed", SUPPRESSION)):
        edits += [(f"{half} {kind} x{factor:g}", half_edit(half, factor, size)) for half in HALVES]
    edits += [
        (
            f"moved to {name.replace('_', ' ')}",
            MoveToRectangle(**pixel_box(box, size), image_size=size),
        )
        for name, box in QUADRANTS.items()
    ]
    edits += [
        ("map of a test image", TransplantMap(model.attention_map_of(donors))),
        ("configured edit", custom_edit),
    ]
    rows = []
    for label, edit in edits:
        decoded = model.decode(z, edit)
        rows.append((label, torch.sigmoid(decoded.logits), decoded.attention["spatial"]))
    return rows


def render_steering(
    checkpoint: dict[str, Any], test_set: dict[str, torch.Tensor], config: GenerateConfig
) -> Figure:
    """The same prior samples under every steering edit, each image beside its map.

    One row per edit (see :func:`steering_rows`); ``n_steered`` samples per row, each as
    its image and the map the generator decoded it with. The donors of the transplanted
    maps are test images, shown above the grid.
    """
    model, model_config = load_checkpoint(checkpoint, for_split=test_set)
    noise = torch.Generator().manual_seed(config.seed)
    z = torch.randn(config.n_steered, model.latent_dim, generator=noise)
    images = test_set["images"]
    donors = images[torch.randperm(len(images), generator=noise)[: config.n_steered]]
    rows = [("test images (map donors)", donors, model.attention_map_of(donors).detach())]
    rows += steering_rows(model, z, donors, steering_edit(config, model.image_shape[-1]))
    strips = [_beside_their_maps(values, maps) for _, values, maps in rows]
    height, width = strips[0].shape[:2]
    figure = Figure(
        figsize=(width / 45 + 0.2, len(rows) * (height / 45 + 0.2) + 0.4), layout="constrained"
    )
    # one axes per row, holding the row's pictures as one image: an axes per picture
    # (hundreds) makes the figure's layout and saving take seconds
    for ax, (label, _, _), strip in zip(figure.subplots(len(rows), 1), rows, strips, strict=True):
        ax.imshow(strip, interpolation="nearest")
        ax.set_title(label, fontsize=6, loc="left", pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(
        f"{model_config.variant}: the same prior samples under attention edits "
        f"(each image beside its map); configured edit: {config.steering}",
        fontsize=8,
    )
    return figure


@torch.no_grad()
def render_scene_edits(
    checkpoint: dict[str, Any], test_set: dict[str, torch.Tensor], config: GenerateConfig
) -> Figure:
    """``n_steered`` test scenes of an ``objects`` model, one column each: the scene, its
    reconstruction (whole pixels), one digit moved to the emptiest cell, that digit removed,
    a copy of it added there, and two digits swapped (scenes of one digit: unchanged)."""
    model, model_config = load_checkpoint(checkpoint, for_split=test_set)
    layout = layout_of(model)
    noise = torch.Generator().manual_seed(config.seed)
    images = test_set["images"]
    x = images[torch.randperm(len(images), generator=noise)[: config.n_steered]]
    mu, _ = model.encode(x)
    present = present_cells(layout, mu)
    batch = torch.arange(len(mu))
    cell = choose_object(present, noise)
    target, _ = emptiest_cell(layout, present, object_centres(layout, mu))
    others = present.clone()
    others[batch, cell] = False
    second = torch.where(others.any(1), choose_object(others, noise), cell)

    def draw(z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model.decode(z).logits)

    rows = [
        ("test scenes", x),
        ("reconstructions (whole pixels)", draw(mu)),
        ("one digit moved to the emptiest cell", draw(scene_edits.move(layout, mu, cell, target))),
        ("that digit removed", draw(scene_edits.remove(layout, mu, cell))),
        (
            "a copy of it added in the emptiest cell",
            draw(scene_edits.add(layout, mu, target, layout.split(mu)[batch, cell, WHAT])),
        ),
        ("two digits swapped", draw(scene_edits.swap(layout, mu, cell, second))),
    ]
    per_row = len(x)
    figure = Figure(figsize=(1.0 * per_row + 0.3, 1.15 * len(rows) + 0.4), layout="constrained")
    for ax, (label, values) in zip(figure.subplots(len(rows), 1), rows, strict=True):
        ax.imshow(np.asarray(_grid(values, per_row)), interpolation="nearest")
        ax.set_title(label, fontsize=7, loc="left", pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(
        f"{model_config.variant}: the same test scenes, edited object by object", fontsize=8
    )
    return figure
