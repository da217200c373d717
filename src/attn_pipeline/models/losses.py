"""Loss terms of the VAE objective, as pure functions of a forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from attn_pipeline.models import VAEOutput


@dataclass
class LossTerms:
    """Per-image terms, shape ``(B,)``: ``recon`` in nats (summed over pixels), ``kl`` in nats."""

    recon: torch.Tensor
    kl: torch.Tensor
    #: the attention loss per image, or None when it was not computed
    attention: torch.Tensor | None = field(default=None)

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


#: What the attention loss ties a map to (``model.attention_target``).
AttentionTarget = Literal["error", "ink"]


def attention_alignment(
    attention_map: torch.Tensor,
    logits: torch.Tensor,
    x: torch.Tensor,
    eps: float = 1e-8,
    *,
    target: AttentionTarget = "error",
) -> torch.Tensor:
    """The attention loss (blog post, step 3): ``KL(p || a)`` per image.

    ``p`` is, with ``target="error"`` (the blog post's), the per-pixel reconstruction error
    (Bernoulli NLL, detached: the loss trains the map, not the decoder); with
    ``target="ink"``, the image's own pixel intensities. Either is average-pooled to the
    map's size and normalised to a distribution over positions; ``a`` is the map, a
    distribution over the same positions.

    Why this KL, in this direction: it is the cross-entropy of the map under the error
    distribution minus a constant, so it is zero exactly when the map equals ``p``, and
    its gradient with respect to the map's softmax logits is ``a - p``, bounded and well
    scaled, like a classifier's. It is mass-covering: the map is pushed to put weight
    wherever error is, instead of collapsing on the single worst position.

    Shapes: ``(B, 1, h, w), (B, C, H, W), (B, C, H, W) -> (B,)``.
    """
    if target == "error":
        per_pixel = F.binary_cross_entropy_with_logits(logits.detach(), x, reduction="none")
    else:
        per_pixel = x
    pooled = F.adaptive_avg_pool2d(per_pixel.sum(1, keepdim=True), attention_map.shape[-2:])
    p = pooled.flatten(1)
    p = p / p.sum(1, keepdim=True).clamp_min(eps)  # (B, h*w)
    log_map = attention_map.flatten(1).clamp_min(eps).log()
    return (p * (p.clamp_min(eps).log() - log_map)).sum(1)


def vae_loss_terms(
    output: VAEOutput,
    x: torch.Tensor,
    *,
    with_attention: bool = False,
    attention_target: AttentionTarget = "error",
) -> LossTerms:
    """Reconstruction and KL terms of one forward pass, and the attention loss if asked for
    (and the variant has a spatial map)."""
    terms = LossTerms(
        recon=bernoulli_nll(output.logits, x), kl=gaussian_kl(output.mu, output.logvar)
    )
    if with_attention and "spatial" in output.attention:
        terms.attention = attention_alignment(
            output.attention["spatial"], output.logits, x, target=attention_target
        )
    return terms


def training_objective(
    terms: LossTerms, *, beta: float, attention_weight: float = 0.0
) -> torch.Tensor:
    """``mean(recon + beta * kl + attention_weight * attention)`` over the batch.

    With ``attention_weight == 0`` the attention term is not added at all, so the objective
    is exactly the VAE's.
    """
    per_image = terms.recon + beta * terms.kl
    if attention_weight > 0 and terms.attention is not None:
        per_image = per_image + attention_weight * terms.attention
    return per_image.mean()
