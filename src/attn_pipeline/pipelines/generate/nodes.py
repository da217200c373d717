"""Images from each trained variant: prior samples, reconstructions, interpolations."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

from attn_pipeline.config import GenerateConfig, ScaleRectangleEdit
from attn_pipeline.models import VAE, load_checkpoint
from attn_pipeline.models.steering import ReplaceMap, ScaleRectangle
from attn_pipeline.models.vae import AttentionEdit


def _grid(images: torch.Tensor, nrow: int) -> Image.Image:
    """``(N, C, H, W)`` in [0, 1] -> one PIL image, ``nrow`` images per row."""
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
    model, model_config = load_checkpoint(checkpoint)
    noise = torch.Generator().manual_seed(config.seed)
    z = torch.randn(config.n_samples, model_config.latent_dim, generator=noise)
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


def _overlay(ax, image: torch.Tensor, attention_map: torch.Tensor, title: str) -> None:
    """Draw ``attention_map (1, h, w)`` as a heat map over ``image (1, 28, 28)``."""
    upsampled = F.interpolate(attention_map[None], size=image.shape[-2:], mode="nearest")[0, 0]
    ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
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
    model, model_config = load_checkpoint(checkpoint)
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
        axes[row, 0].imshow(x[row, 0], cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title("input", fontsize=7)
        axes[row, 1].imshow(recon[row, 0], cmap="gray", vmin=0, vmax=1)
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


def steering_edit(config: GenerateConfig) -> AttentionEdit:
    """The attention edit that ``generate.steering`` describes."""
    edit = config.steering
    if isinstance(edit, ScaleRectangleEdit):
        return ScaleRectangle(
            top=edit.top,
            bottom=edit.bottom,
            left=edit.left,
            right=edit.right,
            factor=edit.factor,
        )
    return ReplaceMap(values=tuple(tuple(row) for row in edit.values))


@torch.no_grad()
def steer_samples(
    model: VAE, z: torch.Tensor, edit: AttentionEdit
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode ``z (B, D)`` as is and with the edited spatial map.

    Returns: images before and after ``(B, C, H, W)``, maps before and after ``(B, 1, h, w)``.
    """
    before = model.decode(z)
    after = model.decode(z, edit)
    return (
        torch.sigmoid(before.logits),
        torch.sigmoid(after.logits),
        before.attention["spatial"],
        after.attention["spatial"],
    )


def render_steering(checkpoint: dict[str, Any], config: GenerateConfig) -> Figure:
    """The same prior samples decoded before and after the configured attention edit."""
    model, model_config = load_checkpoint(checkpoint)
    noise = torch.Generator().manual_seed(config.seed)
    z = torch.randn(config.n_steered, model_config.latent_dim, generator=noise)
    before, after, map_before, map_after = steer_samples(model, z, steering_edit(config))
    rows = [
        ("map", map_before),
        ("sample", before),
        ("edited map", map_after),
        ("steered sample", after),
    ]
    figure = Figure(figsize=(0.9 * len(z), 0.95 * len(rows) + 0.4), layout="constrained")
    axes = figure.subplots(len(rows), len(z), squeeze=False)
    for r, (label, values) in enumerate(rows):
        for c in range(len(z)):
            cmap, vmax = ("inferno", None) if "map" in label else ("gray", 1)
            axes[r, c].imshow(values[c, 0], cmap=cmap, vmin=0, vmax=vmax)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=7)
    figure.suptitle(f"{model_config.variant}: steering by attention, {config.steering}", fontsize=8)
    return figure
