"""Distances between two sets of classifier features: FID-proxy, KID-proxy, precision/recall.

All take feature matrices ``(N, d)`` (any float dtype, any device) and compute in float64,
because the Fréchet distance subtracts nearly equal traces and loses digits in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _float64(features: torch.Tensor) -> torch.Tensor:
    if features.ndim != 2:
        raise ValueError(f"features must be (N, d), got shape {tuple(features.shape)}")
    return features.detach().to("cpu", torch.float64)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al., 2017).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``. The last trace is
    computed as ``tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))``, a symmetric matrix with the same
    eigenvalues as ``S_a S_b``, so only symmetric eigen-decompositions are needed (no
    complex ``sqrtm``). Shapes: ``(N, d), (M, d) -> float``.
    """
    a, b = _float64(features_a), _float64(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} and {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least two samples in each set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return float(distance.clamp_min(0))


@dataclass(frozen=True)
class KernelDistance:
    """The KID estimate: mean and standard deviation of the unbiased MMD^2 over subsets."""

    mean: float
    std: float


def _polynomial_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 with the kernel ``k(u, v) = (u.v / d + 1)^3`` (Bińkowski et al., 2018)."""
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    sum_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    sum_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return sum_xx + sum_yy - 2 * k_xy.mean()


def kernel_distance(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> KernelDistance:
    """Kernel Inception Distance on classifier features: MMD^2 over random subsets.

    Unbiased, so unlike the Fréchet distance its expectation is 0 for identical
    distributions at any sample size. Shapes: ``(N, d), (M, d) -> KernelDistance``.
    """
    a, b = _float64(features_a), _float64(features_b)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError("the kernel distance needs at least two samples in each set")
    generator = torch.Generator().manual_seed(seed)
    values = torch.stack(
        [
            _polynomial_mmd(
                a[torch.randperm(len(a), generator=generator)[:size]],
                b[torch.randperm(len(b), generator=generator)[:size]],
            )
            for _ in range(subsets)
        ]
    )
    std = float(values.std()) if subsets > 1 else math.nan
    return KernelDistance(mean=float(values.mean()), std=std)


def kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance (float64) from each row to its k-th nearest other row: the radii of the
    k-NN balls whose union is the set's manifold in :func:`precision_recall`.
    ``(N, d) -> (N,)``."""
    features = _float64(features)
    if len(features) <= k:
        raise ValueError(f"k-th neighbour radii with k={k} need more than {k} samples")
    radii = []
    for start in range(0, len(features), chunk):
        distances = torch.cdist(features[start : start + chunk], features)
        # the k+1-th smallest: the smallest is the row itself, at distance 0
        radii.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _fraction_in_manifold(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int
) -> float:
    """Fraction of ``queries`` inside at least one ball ``(support[i], radii[i])``."""
    inside = []
    for start in range(0, len(queries), chunk):
        distances = torch.cdist(queries[start : start + chunk], support)
        inside.append((distances <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float


def precision_recall(
    real: torch.Tensor,
    generated: torch.Tensor,
    *,
    k: int = 3,
    chunk: int = 1024,
    real_radii: torch.Tensor | None = None,
) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN manifolds.

    Precision: the fraction of generated samples inside the real manifold (the union of
    balls around each real sample reaching its k-th nearest real neighbour); recall: the
    fraction of real samples inside the generated manifold. Shapes: ``(N, d), (M, d)``.
    ``real_radii`` ``(N,)``: :func:`kth_neighbour_radii` of ``real`` with this ``k``,
    computed once for a test set that many models are measured against.
    """
    real64, gen64 = _float64(real), _float64(generated)
    if len(real64) <= k or len(gen64) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples in each set")
    if real_radii is None:
        real_radii = kth_neighbour_radii(real64, k, chunk)
    elif real_radii.shape != (len(real64),):
        raise ValueError(
            f"real_radii has shape {tuple(real_radii.shape)}, not ({len(real64)},): one "
            "radius per real sample"
        )
    real_radii = real_radii.to(torch.float64)
    gen_radii = kth_neighbour_radii(gen64, k, chunk)
    return PrecisionRecall(
        precision=_fraction_in_manifold(gen64, real64, real_radii, chunk),
        recall=_fraction_in_manifold(real64, gen64, gen_radii, chunk),
    )


def class_statistics(probabilities: torch.Tensor) -> tuple[float, float]:
    """``(sample_confidence, class_coverage)`` of classifier outputs ``(N, classes)``.

    Confidence: the mean of the largest class probability. Coverage: the entropy of the
    histogram of predicted classes divided by ``log(classes)``, so 1.0 means every class
    is predicted equally often and 0 means one class only.
    """
    p = probabilities.detach().to("cpu", torch.float64)
    n_classes = p.shape[1]
    confidence = float(p.max(dim=1).values.mean())
    counts = torch.bincount(p.argmax(dim=1), minlength=n_classes).double()
    frequencies = counts / counts.sum()
    nonzero = frequencies[frequencies > 0]
    coverage = float(-(nonzero * nonzero.log()).sum() / math.log(n_classes))
    return confidence, coverage
