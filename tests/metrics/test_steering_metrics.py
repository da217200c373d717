"""The steering benchmark: its arithmetic on hand-made images, its contract, and the claim
itself on a model trained on real MNIST (skipped where no local copy is given)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attn_pipeline.data.fetch import ENV_VAR, fetch
from attn_pipeline.data.idx import IDXDataset
from attn_pipeline.metrics import steering_metrics
from attn_pipeline.metrics.steering import edit_effect, region_mask
from attn_pipeline.models import build_vae
from attn_pipeline.models.classifier import FeatureClassifier
from attn_pipeline.spec.config import ModelConfig, TrainConfig
from attn_pipeline.training.loop import fit
from tests.conftest import MNIST_SHAPE


def test_edit_effect_measures_ink_share_and_locality() -> None:
    before = torch.zeros(2, 1, 28, 28)
    before[:, :, 4:10, 10:18] = 1.0  # ink in the top half only
    before[:, :, 18:24, 10:18] = 1.0  # ... and as much in the bottom half
    after = before.clone()
    after[:, :, 4:10, 10:18] = 0.25  # the top half's ink cut to a quarter
    effect = edit_effect(before, after, region_mask("top", 28))
    # share of the top half: 0.5 before, 0.25 * 48 / (0.25 * 48 + 48) = 0.2 after
    assert effect.ink_share_change == pytest.approx(2 * (0.2 - 0.5))
    assert effect.change_inside == pytest.approx(2 * 0.75 * 48 / (14 * 28))
    assert effect.change_outside == 0.0


def test_variants_without_a_map_report_nothing() -> None:
    model = build_vae(ModelConfig(variant="none", latent_dim=4), MNIST_SHAPE).eval()
    with pytest.raises(ValueError, match="spatial map"):
        steering_metrics(
            model, FeatureClassifier(image_shape=MNIST_SHAPE, n_classes=10).eval(), n=8, seed=0
        )


def test_steering_metrics_names_and_ranges() -> None:
    torch.manual_seed(0)
    model = build_vae(ModelConfig(variant="spatial_gate", latent_dim=4), MNIST_SHAPE).eval()
    extractor = FeatureClassifier(image_shape=MNIST_SHAPE, n_classes=10).eval()
    metrics = steering_metrics(model, extractor, n=12, seed=0, batch_size=5)
    assert set(metrics) == {
        "steer_emphasis_ink_share",
        "steer_suppression_ink_share",
        "steer_emphasis_change_inside",
        "steer_emphasis_change_outside",
        "steer_emphasis_locality",
        "steer_suppression_change_inside",
        "steer_suppression_change_outside",
        "steer_suppression_locality",
        "steer_confidence_ratio",
        "steer_class_kept",
    }
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert 0.0 <= metrics["steer_class_kept"] <= 1.0
    # seeded: the same figures again
    assert steering_metrics(model, extractor, n=12, seed=0, batch_size=5) == metrics


@pytest.mark.pipeline  # trains on real MNIST
@pytest.mark.skipif(
    not os.environ.get(ENV_VAR), reason=f"{ENV_VAR} does not name a local MNIST copy"
)
def test_steering_moves_ink_on_a_model_trained_on_real_mnist(tmp_path: Path) -> None:
    """spatial_gate, 2 epochs on 6,000 real MNIST digits: emphasising a half raises its
    ink share, suppressing it lowers it, and suppression changes the inside of the half
    more than the outside, on 500 prior samples."""
    folder = fetch("mnist", tmp_path)
    images = IDXDataset(filepath=str(folder / "train-images-idx3-ubyte.gz")).load()
    train = torch.from_numpy(images[:6000].copy()).float().div(255).unsqueeze(1)
    torch.manual_seed(0)
    model = build_vae(
        ModelConfig(variant="spatial_gate", attention_loss_weight=1.0, attention_target="ink"),
        MNIST_SHAPE,
    )
    model.init_output_bias(train.mean(0))
    fit(model, train, None, TrainConfig(epochs=2, batch_size=128), show_progress=False)
    metrics = steering_metrics(
        model.eval(), FeatureClassifier(image_shape=MNIST_SHAPE, n_classes=10).eval(), n=500, seed=0
    )
    assert metrics["steer_emphasis_ink_share"] > 0.05
    assert metrics["steer_suppression_ink_share"] < -0.05
    assert metrics["steer_suppression_change_inside"] > (
        2 * metrics["steer_suppression_change_outside"]
    )


def test_the_datas_own_ink_share_percentiles() -> None:
    from attn_pipeline.metrics.steering import ink_share_percentiles  # noqa: PLC0415

    images = torch.zeros(100, 1, 28, 28)
    images[:, :, 2:8, 4:10] = 1.0  # ink in the top left only
    images[:50, :, 20:26, 4:10] = 1.0  # half of them as much again in the bottom left
    shares = ink_share_percentiles(images, (5, 50, 99))
    assert shares["left"][50] == 1.0 and shares["right"][99] == 0.0
    assert shares["top"][5] == 0.5 and shares["top"][99] == 1.0
