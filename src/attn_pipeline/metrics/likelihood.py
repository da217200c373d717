"""Importance-weighted negative log-likelihood (Burda et al., 2016, arXiv:1509.00519)."""

from __future__ import annotations

import math

import torch

from attn_pipeline.models import VAE
from attn_pipeline.models.losses import bernoulli_nll

_LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def importance_weighted_nll(
    model: VAE,
    images: torch.Tensor,
    *,
    samples: int,
    seed: int = 0,
    decodes_per_batch: int = 1000,
) -> torch.Tensor:
    """``-log p(x)`` per image, estimated with ``samples`` (K) posterior draws, in nats.

    ``log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K`` with
    ``z_k ~ q(z|x)``. With K = 1 its expectation is the ELBO; it never exceeds the ELBO in
    expectation and tightens as K grows. The K draws of several images are decoded in one
    batch of about ``decodes_per_batch`` images. ``images (N, C, H, W) -> (N,)`` on the CPU.
    """
    if samples < 1:
        raise ValueError(f"the number of importance samples must be positive, got {samples}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    noise = torch.Generator(device=device).manual_seed(seed)
    per_batch = max(1, decodes_per_batch // samples)
    nll = []
    for start in range(0, len(images), per_batch):
        x = images[start : start + per_batch].to(device)  # (B, C, H, W)
        mu, logvar = model.encode(x)  # (B, D)
        eps = torch.randn((samples, *mu.shape), generator=noise, device=device)  # (K, B, D)
        z = mu + torch.exp(0.5 * logvar) * eps
        log_q = -0.5 * (eps.pow(2) + logvar + _LOG_2PI).sum(-1)  # (K, B)
        log_prior = -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)  # (K, B)
        logits = model.decode(z.flatten(0, 1)).logits  # (K*B, C, H, W)
        targets = x.expand(samples, *x.shape).flatten(0, 1)
        log_likelihood = -bernoulli_nll(logits, targets).view(samples, -1)  # (K, B)
        log_weights = log_likelihood + log_prior - log_q
        nll.append(-(torch.logsumexp(log_weights, dim=0) - math.log(samples)).cpu())
    model.train(was_training)
    return torch.cat(nll)
