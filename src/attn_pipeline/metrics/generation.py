"""Generation quality of a VAE, measured on a trained classifier's features."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attn_pipeline.models import VAE
from attn_pipeline.models.classifier import FeatureClassifier

from .feature_distances import (
    class_statistics,
    frechet_distance,
    kernel_distance,
    kth_neighbour_radii,
    precision_recall,
)


@dataclass(frozen=True)
class ClassifierView:
    """Features ``(N, d)`` and class probabilities ``(N, classes)`` of a set of images."""

    features: torch.Tensor
    probabilities: torch.Tensor


@torch.no_grad()
def classifier_view(
    extractor: FeatureClassifier, images: torch.Tensor, batch_size: int = 1000
) -> ClassifierView:
    """Run ``images (N, C, H, W)`` in [0, 1] through the extractor, in batches."""
    device = next(extractor.parameters()).device
    features, probabilities = [], []
    for start in range(0, len(images), batch_size):
        h = extractor.features(images[start : start + batch_size].to(device))
        features.append(h.cpu())
        probabilities.append(torch.softmax(extractor.head(h), dim=1).cpu())
    return ClassifierView(torch.cat(features), torch.cat(probabilities))


@dataclass(frozen=True)
class RealImages:
    """What the metrics compare every model with, computed once per extractor and image
    set (the test set's first N): the images' view, and each one's k-th nearest-neighbour
    radius among them (the real manifold of precision/recall)."""

    view: ClassifierView
    radii: torch.Tensor  # (N,) float64
    k: int


def real_images(extractor: FeatureClassifier, images: torch.Tensor, *, k: int) -> RealImages:
    """:class:`RealImages` of ``images (N, C, H, W)`` in [0, 1]."""
    view = classifier_view(extractor, images)
    return RealImages(view=view, radii=kth_neighbour_radii(view.features, k), k=k)


@torch.no_grad()
def prior_samples(model: VAE, n: int, *, seed: int, batch_size: int = 1000) -> torch.Tensor:
    """``n`` images decoded from ``z ~ N(0, I)``: the Bernoulli means, ``(n, C, H, W)``."""
    device = next(model.parameters()).device
    noise = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        z = torch.randn(
            min(batch_size, n - start), model.latent_dim, generator=noise, device=device
        )
        out.append(torch.sigmoid(model.decode(z).logits).cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstructions(model: VAE, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Bernoulli means decoded from the posterior means of ``images``, ``(N, C, H, W)``."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        out.append(torch.sigmoid(model(x, sample=False).logits).cpu())
    return torch.cat(out)


def generation_metrics(
    real: RealImages,
    samples: ClassifierView,
    recon: ClassifierView,
    *,
    kid_subsets: int,
    kid_subset_size: int,
    seed: int,
) -> dict[str, float]:
    """The FID-proxy of samples and of reconstructions, the KID-proxy, precision, recall
    (with ``real``'s k), sample confidence and class coverage (names without ``test/``)."""
    kid = kernel_distance(
        samples.features,
        real.view.features,
        subsets=kid_subsets,
        subset_size=kid_subset_size,
        seed=seed,
    )
    pr = precision_recall(real.view.features, samples.features, k=real.k, real_radii=real.radii)
    confidence, coverage = class_statistics(samples.probabilities)
    return {
        "fid_proxy": frechet_distance(samples.features, real.view.features),
        "fid_proxy_recon": frechet_distance(recon.features, real.view.features),
        "kid_proxy": kid.mean,
        "kid_proxy_std": kid.std,
        "precision": pr.precision,
        "recall": pr.recall,
        "sample_confidence": confidence,
        "class_coverage": coverage,
    }
