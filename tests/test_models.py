"""Models: output shapes, attention maps, a loss that decreases, checkpoints that reload."""

from __future__ import annotations

import pytest
import torch

from attn_pipeline.config import ModelConfig, TrainConfig
from attn_pipeline.losses import gaussian_kl, vae_loss_terms
from attn_pipeline.models import (
    ImageSampler,
    LatentSoftmaxAttention,
    build_vae,
    load_checkpoint,
    make_checkpoint,
)
from attn_pipeline.training import fit
from tests.conftest import digit_like_images

VARIANTS = ["none", "latent"]
BACKBONES = ["conv", "mlp"]


@pytest.fixture
def batch() -> torch.Tensor:
    images, _ = digit_like_images(64)
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shapes(variant: str, backbone: str, batch: torch.Tensor) -> None:
    model = build_vae(ModelConfig(variant=variant, backbone=backbone, latent_dim=8))
    out = model(batch[:5])
    assert out.logits.shape == (5, 1, 28, 28)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (5, 8)
    if variant == "latent":
        assert set(out.attention) == {"latent"}
        assert out.attention["latent"].shape == (5, 8)
        torch.testing.assert_close(out.attention["latent"].sum(1), torch.ones(5))
    else:
        assert out.attention == {}


def test_latent_attention_is_the_blog_posts_softmax() -> None:
    block = LatentSoftmaxAttention(4)
    z = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    code, attention = block(z)
    torch.testing.assert_close(attention, torch.softmax(z, dim=-1))  # w starts at ones
    torch.testing.assert_close(code, torch.cat([z, attention], dim=-1))
    with torch.no_grad():
        block.weight.fill_(0.0)
    torch.testing.assert_close(block(z)[1], torch.full((1, 4), 0.25))


def test_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    zeros = torch.zeros(3, 5)
    torch.testing.assert_close(gaussian_kl(zeros, zeros), torch.zeros(3))
    assert bool((gaussian_kl(torch.ones(3, 5), zeros) > 0).all())


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_the_loss_on_a_small_batch(
    variant: str, backbone: str, batch: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = build_vae(ModelConfig(variant=variant, backbone=backbone, latent_dim=8))

    def loss() -> float:
        with torch.no_grad():
            return float(vae_loss_terms(model(batch, sample=False), batch).neg_elbo.mean())

    before = loss()
    result = fit(
        model,
        batch,
        None,
        TrainConfig(epochs=15, batch_size=32, learning_rate=3e-3),
        show_progress=False,
    )
    assert loss() < 0.8 * before
    assert len(result.history) == 15 and len(result.epoch_states) == 15
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]


def test_checkpoint_round_trip_and_sampler(batch: torch.Tensor) -> None:
    config = ModelConfig(variant="latent", backbone="conv", latent_dim=6)
    model = build_vae(config).eval()
    restored, restored_config = load_checkpoint(make_checkpoint(config, model.state_dict()))
    assert restored_config == config
    with torch.no_grad():
        torch.testing.assert_close(
            restored(batch, sample=False).logits, model(batch, sample=False).logits
        )
        images = ImageSampler(restored.generator, latent_dim=6)(torch.randn(3, 6))
    assert images.shape == (3, 1, 28, 28)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_output_bias_starts_at_the_mean_image(batch: torch.Tensor) -> None:
    model = build_vae(ModelConfig(backbone="mlp", latent_dim=4))
    mean = batch.mean(0)
    model.init_output_bias(mean)
    bias = model.generator.decoder.output_bias.bias
    torch.testing.assert_close(torch.sigmoid(bias), mean.clamp(1e-3, 1 - 1e-3))
