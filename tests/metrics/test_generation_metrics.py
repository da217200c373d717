"""FID-proxy, KID-proxy, precision/recall and class statistics against plain references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg

from attn_pipeline.metrics import (
    class_statistics,
    frechet_distance,
    kernel_distance,
    kth_neighbour_radii,
    precision_recall,
)


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / math.sqrt(d)
    return torch.from_numpy(rng.normal(size=(n, d)) @ mixing + shift).float()


def _frechet_reference(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula in float64 with SciPy's general matrix square root."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.mark.parametrize("d", [8, 64])
def test_frechet_distance_matches_the_scipy_reference(d: int) -> None:
    a, b = _features(800, d, seed=0), _features(600, d, seed=1, shift=0.3)
    expected = _frechet_reference(a.numpy(), b.numpy())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-4)


def test_frechet_distance_of_a_shift_is_its_squared_length() -> None:
    a = _features(500, 16, seed=2)
    shift = torch.full((16,), 0.25)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)


def _mmd_reference(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (u @ v.T / d + 1) ** 3

    m, n = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * k(x, y).mean()
    )


def test_kernel_distance_matches_the_reference_and_is_unbiased() -> None:
    a, b = _features(300, 10, seed=3), _features(300, 10, seed=4, shift=0.5)
    one = kernel_distance(a, b, subsets=1, subset_size=300)
    expected = _mmd_reference(a.double().numpy(), b.double().numpy())
    assert one.mean == pytest.approx(expected, rel=1e-9)
    pool = _features(4000, 10, seed=5)  # two halves of one sample: the same distribution
    same = kernel_distance(pool[:2000], pool[2000:], subsets=20, subset_size=500)
    different = kernel_distance(a, b, subsets=20, subset_size=200)
    assert abs(same.mean) < 3 * same.std  # zero within its spread
    assert different.mean > 10 * different.std > 0


def _pr_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x: np.ndarray) -> np.ndarray:
        dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(dist, axis=1)[:, k]

    def coverage(queries: np.ndarray, support: np.ndarray, r: np.ndarray) -> float:
        dist = np.linalg.norm(queries[:, None] - support[None], axis=-1)
        return float((dist <= r[None]).any(axis=1).mean())

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_match_a_brute_force_reference() -> None:
    real, fake = _features(150, 4, seed=6), _features(120, 4, seed=7, shift=0.8)
    result = precision_recall(real, fake, k=3, chunk=37)  # chunks that do not divide N
    precision, recall = _pr_reference(real.double().numpy(), fake.double().numpy(), 3)
    assert (result.precision, result.recall) == pytest.approx((precision, recall))
    assert 0 < result.precision < 1 and 0 < result.recall < 1
    same = precision_recall(real, real, k=3)
    assert (same.precision, same.recall) == (1.0, 1.0)
    far = precision_recall(real, real + 100.0, k=3)
    assert (far.precision, far.recall) == (0.0, 0.0)
    # the real set's radii measured once (a test set shared by many models): the same figures
    radii = kth_neighbour_radii(real, 3, chunk=37)
    assert precision_recall(real, fake, k=3, real_radii=radii) == result
    with pytest.raises(ValueError, match="one radius per real sample"):
        precision_recall(real, fake, k=3, real_radii=radii[:-1])


def test_class_statistics() -> None:
    balanced = torch.eye(10).repeat(5, 1)  # every class predicted 5 times, with certainty
    assert class_statistics(balanced) == pytest.approx((1.0, 1.0))
    one_class = torch.full((20, 10), 0.05)
    one_class[:, 3] = 0.55
    assert class_statistics(one_class) == pytest.approx((0.55, 0.0))


def test_metrics_refuse_shapes_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="feature widths differ"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="needs more than 3 samples"):
        precision_recall(torch.zeros(3, 2), torch.zeros(10, 2), k=3)
