"""Models: output shapes, attention maps, a loss that decreases, checkpoints that reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attn_pipeline.models import (
    CBAM,
    ImageSampler,
    LatentSoftmaxAttention,
    SelfAttention2d,
    build_vae,
    count_parameters,
    load_checkpoint,
    make_checkpoint,
)
from attn_pipeline.models.backbones import SubPixelConvTranspose2d
from attn_pipeline.models.losses import gaussian_kl, vae_loss_terms
from attn_pipeline.pipelines.study.statistics import EQUAL_SIZE_TOLERANCE, comparison_kind
from attn_pipeline.spec.config import ModelConfig, TrainConfig
from attn_pipeline.spec.parameters import load_parameters
from attn_pipeline.spec.variants import VARIANTS as REGISTERED
from attn_pipeline.spec.variants import VariantSpec, add_variant
from attn_pipeline.training.loop import TrainingDivergedError, fit
from tests.conftest import MNIST_SHAPE, digit_like_images

VARIANTS = list(REGISTERED)
BACKBONES = ["conv", "mlp"]
CONV_ONLY = {name for name, spec in REGISTERED.items() if spec.conv_only}
#: every (variant, backbone) a model can be built of: a conv-only variant has no MLP form
BUILDABLE = [(v, b) for v in VARIANTS for b in BACKBONES if not (b == "mlp" and v in CONV_ONLY)]
#: the maps each variant's forward returns in eval mode, with their shapes for batch 5 (a
#: variant registered without its expectation here fails test_forward_shapes_and_maps)
EXPECTED_MAPS = {
    "none": {},
    "latent": {"latent": (5, 8)},
    "spatial": {"spatial": (5, 1, 14, 14)},
    "spatial_gate": {"spatial": (5, 1, 14, 14)},
    "self": {"self": (5, 1, 14, 14)},
    "cbam": {"cbam_spatial": (5, 1, 14, 14), "cbam_channel": (5, 32)},
    "where": {"spatial": (5, 1, 14, 14)},
    "objects": {"presence": (5, 1, 7, 7)},
}
#: settings a variant cannot do without (on 28x28 images)
REQUIRED = {
    "where": {"glyph_size": 20},
    "objects": {"glyph_size": 8, "attention_resolution": 7, "conv_channels": (8, 16)},
}
#: the latent code's size where it is not latent_dim (8): where adds a position; objects
#: has per cell a presence, a centre and latent_dim of appearance
LATENT_DIMS = {"where": 8 + 2, "objects": 7 * 7 * (1 + 2 + 8)}


def _config(variant: str, backbone: str = "conv", **kwargs) -> ModelConfig:
    kwargs = {**REQUIRED.get(variant, {}), **kwargs}
    return ModelConfig(variant=variant, backbone=backbone, latent_dim=8, **kwargs)


@pytest.fixture
def batch() -> torch.Tensor:
    images, _ = digit_like_images(64)
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


@pytest.mark.parametrize(("variant", "backbone"), BUILDABLE)
def test_forward_shapes_and_attention_maps(
    variant: str, backbone: str, batch: torch.Tensor
) -> None:
    model = build_vae(_config(variant, backbone), MNIST_SHAPE).eval()
    out = model(batch[:5])
    assert out.logits.shape == (5, 1, 28, 28)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (5, model.latent_dim)
    assert model.latent_dim == LATENT_DIMS.get(variant, 8)
    shapes = {name: tuple(value.shape) for name, value in out.attention.items()}
    assert shapes == EXPECTED_MAPS[variant]
    for name in ("latent", "spatial", "self"):  # distributions over dimensions / positions
        if name in out.attention:
            torch.testing.assert_close(out.attention[name].flatten(1).sum(1), torch.ones(5))


@pytest.mark.parametrize("variant", sorted(CONV_ONLY))
def test_conv_only_variants_refuse_the_mlp_backbone(variant: str) -> None:
    with pytest.raises(ValueError, match="needs backbone: conv"):
        _config(variant, "mlp")


@pytest.mark.parametrize("variant", ["self", "cbam"])
def test_feature_attention_starts_as_the_identity(variant: str, batch: torch.Tensor) -> None:
    """gamma = 0 at initialisation: the block passes its input through unchanged."""
    model = build_vae(_config(variant), MNIST_SHAPE).eval()
    block = model.generator.decoder.block
    features = torch.randn(4, 32, 14, 14)
    torch.testing.assert_close(block(features)[0], features)


def test_attention_blocks_preserve_shape_once_trained() -> None:
    for block in (SelfAttention2d(32), CBAM(32)):
        with torch.no_grad():
            block.gamma.fill_(0.5)
        features = torch.randn(2, 32, 7, 7)
        out, _ = block(features)
        assert out.shape == features.shape and not torch.allclose(out, features)


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


@pytest.mark.parametrize(("variant", "backbone"), BUILDABLE)
def test_training_lowers_the_loss_on_a_small_batch(
    variant: str, backbone: str, batch: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = build_vae(_config(variant, backbone), MNIST_SHAPE)

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
    assert len(result.history) == 15
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]


def test_checkpoint_round_trip_and_sampler(batch: torch.Tensor) -> None:
    config = ModelConfig(variant="latent", backbone="conv", latent_dim=6)
    model = build_vae(config, MNIST_SHAPE).eval()
    restored, restored_config = load_checkpoint(
        make_checkpoint(config, MNIST_SHAPE, model.state_dict())
    )
    assert restored_config == config
    with torch.no_grad():
        torch.testing.assert_close(
            restored(batch, sample=False).logits, model(batch, sample=False).logits
        )
        images = ImageSampler(restored.generator, latent_dim=6)(torch.randn(3, 6))
    assert images.shape == (3, 1, 28, 28)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_output_bias_starts_at_the_mean_image(batch: torch.Tensor) -> None:
    model = build_vae(ModelConfig(backbone="mlp", latent_dim=4), MNIST_SHAPE)
    mean = batch.mean(0)
    model.init_output_bias(mean)
    bias = model.generator.decoder.output_bias.bias
    torch.testing.assert_close(torch.sigmoid(bias), mean.clamp(1e-3, 1 - 1e-3))


def test_sub_pixel_transposed_conv_matches_torchs_transposed_conv() -> None:
    """The decoder's fast last layer computes what nn.ConvTranspose2d(4, 2, 1) computes,
    forward and backward, from the same state dict."""
    torch.manual_seed(0)
    for in_channels, out_channels, bias in ((32, 1, False), (9, 3, True)):
        fast = SubPixelConvTranspose2d(in_channels, out_channels, bias=bias)
        reference = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)
        reference.load_state_dict(fast.state_dict())
        x = torch.randn(4, in_channels, 7, 5, requires_grad=True)
        out, expected = fast(x), reference(x)
        assert out.shape == expected.shape == (4, out_channels, 14, 10)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad(out.square().sum(), [x, fast.weight])
        expected_grads = torch.autograd.grad(expected.square().sum(), [x, reference.weight])
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_diverging_training_stops_at_the_first_non_finite_loss(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_vae(_config("none"), MNIST_SHAPE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=3, batch_size=16, learning_rate=1e6)
    with pytest.raises(
        TrainingDivergedError, match=r"none at epoch 1, batch \d+ of 4 .*learning_rate = 1000000.0"
    ):
        fit(model, batch, None, config, show_progress=False, name="none")
    # the step that produced it was refused: every weight that reached the optimizer is finite
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_studys_size_baseline_matches_its_largest_variant() -> None:
    """``none_wide`` is the equal-size baseline: within 2% of the parameters of the study's
    largest entry, as the comparison table says (read from the project's own parameters)."""
    params = load_parameters(env="base")
    sizes = {
        name: count_parameters(
            build_vae(ModelConfig.model_validate(params[name]["model"]), MNIST_SHAPE)
        )
        for name in params["study"]["entries"]
    }
    largest = max(sizes.values())
    assert "none_wide" in params["study"]["baselines"]
    assert abs(sizes["none_wide"] / largest - 1) <= EQUAL_SIZE_TOLERANCE
    assert comparison_kind(sizes["latent"], sizes["none_wide"]) == "equal budget and size"
    assert comparison_kind(sizes["latent"], sizes["none"]) == "equal budget, +24% parameters"


class HalfGate(nn.Module):
    """A toy feature block: every feature times a learned gate, its map the gate's mean."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return x * self.gate, {"half_gate": self.gate.mean().expand(len(x), 1, 1, 1)}


@pytest.fixture
def toy_variant():
    """A variant added the documented way only: its module and one registry entry."""
    spec = add_variant(
        VariantSpec("half_gate", "a toy feature block", feature_block=f"{__name__}:HalfGate")
    )
    yield spec
    del REGISTERED[spec.name]


def test_a_variant_is_its_module_and_one_registry_entry(toy_variant, batch) -> None:
    config = _config(toy_variant.name)  # the configuration knows it from the registry
    model = build_vae(config, MNIST_SHAPE)
    out = model.eval()(batch[:5])
    assert set(out.attention) == {"half_gate"} and out.logits.shape == (5, 1, 28, 28)
    fit(model, batch, None, TrainConfig(epochs=1, batch_size=32), show_progress=False)
    assert load_checkpoint(make_checkpoint(config, MNIST_SHAPE, model.state_dict()))[1] == config
    with pytest.raises(ValueError, match="attends over conv feature maps"):
        _config(toy_variant.name, "mlp")  # its block needs the conv backbone: said, not assumed
    with pytest.raises(ValueError, match="Input should be 'none', 'latent'.*'half_gate'"):
        _config("half_gates")


#: The initial weights of the shipped entries' models at seed 0 (a hash of every tensor):
#: the published figures were trained from these. Building the modules in another order
#: draws other weights and moves every figure.
INITIAL_WEIGHTS = {
    ("none", "conv"): "00dfe2c10aa98e6a",
    ("latent", "conv"): "4af4550e7637d271",
    ("spatial_gate", "conv"): "678241608c8ca063",
    ("self", "conv"): "3f3a321a2b9895dd",
    ("cbam", "conv"): "13f1af7d034ae760",
    ("none", "mlp"): "88587dfec573ac09",
    ("spatial", "mlp"): "dee521f7c2456a21",
}


@pytest.mark.parametrize(("variant", "backbone"), sorted(INITIAL_WEIGHTS))
def test_a_seed_gives_the_models_their_published_initial_weights(
    variant: str, backbone: str
) -> None:
    from attn_pipeline.data.fingerprints import state_fingerprint  # noqa: PLC0415

    resolution = {"attention_resolution": 7} if variant in ("self", "cbam") else {}
    torch.manual_seed(0)
    model = build_vae(ModelConfig(variant=variant, backbone=backbone, **resolution), MNIST_SHAPE)
    assert state_fingerprint(model.state_dict()) == INITIAL_WEIGHTS[(variant, backbone)]
