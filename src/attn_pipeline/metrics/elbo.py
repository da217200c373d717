"""ELBO, reconstruction error and KL on a set of images."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from attn_pipeline.models import VAE
from attn_pipeline.models.losses import vae_loss_terms


@dataclass(frozen=True)
class ReconstructionMetrics:
    """Means over the images, each per image unless its name says per pixel.

    ``neg_elbo`` and ``recon_bce`` use one posterior sample per image, as the ELBO is
    defined (an unbiased estimate of it); nothing here uses the posterior mean.
    """

    neg_elbo: float  # nats per image: recon_bce + kl
    recon_bce: float  # nats per image: Bernoulli cross-entropy summed over pixels
    kl: float  # nats per image
    mse: float  # per pixel, between the image and sigmoid(logits)
    n_images: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


@torch.no_grad()
def evaluate_reconstruction(
    model: VAE, images: torch.Tensor, *, batch_size: int = 500, seed: int = 0
) -> ReconstructionMetrics:
    """Evaluate ``model`` on ``images (N, C, H, W)`` in [0, 1], with seeded posterior samples.

    The images may live on any device; batches are moved to the model's device.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    noise = torch.Generator(device=device).manual_seed(seed)
    totals = torch.zeros(4, dtype=torch.float64)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        out = model(x, sample=True, generator=noise)
        terms = vae_loss_terms(out, x)
        mse = F.mse_loss(torch.sigmoid(out.logits), x, reduction="none").flatten(1).mean(1)
        batch = torch.stack([terms.neg_elbo.sum(), terms.recon.sum(), terms.kl.sum(), mse.sum()])
        totals += batch.double().cpu()
    model.train(was_training)
    n = len(images)
    neg_elbo, recon, kl, mse = (totals / n).tolist()
    return ReconstructionMetrics(neg_elbo=neg_elbo, recon_bce=recon, kl=kl, mse=mse, n_images=n)
