"""Loss terms of the VAE objective, as pure functions of a forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attn_pipeline.models import VAEOutput


@dataclass
class LossTerms:
    """Per-image terms, shape ``(B,)``: ``recon`` in nats (summed over pixels), ``kl`` in nats."""

    recon: torch.Tensor
    kl: torch.Tensor

    @property
    def neg_elbo(self) -> torch.Tensor:
        """``recon + kl``: the negative evidence lower bound per image."""
        return self.recon + self.kl


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``-log p(x | z)`` per image for Bernoulli pixels, from logits (numerically stable).

    For grey levels in [0, 1] this is the cross-entropy that pytorch/examples' VAE uses.
    Shapes: ``(B, C, H, W), (B, C, H, W) -> (B,)``.
    """
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` per row, analytic (Kingma & Welling, App. B).

    Shapes: ``(B, D), (B, D) -> (B,)``.
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def vae_loss_terms(output: VAEOutput, x: torch.Tensor) -> LossTerms:
    """Reconstruction and KL terms of one forward pass."""
    return LossTerms(
        recon=bernoulli_nll(output.logits, x), kl=gaussian_kl(output.mu, output.logvar)
    )


def training_objective(terms: LossTerms, *, beta: float) -> torch.Tensor:
    """``mean(recon + beta * kl)`` over the batch: the scalar the optimiser minimises."""
    return (terms.recon + beta * terms.kl).mean()
