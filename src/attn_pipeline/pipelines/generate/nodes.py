"""Images from each trained variant: prior samples, reconstructions, interpolations."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

from attn_pipeline.config import GenerateConfig
from attn_pipeline.models import load_checkpoint


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
