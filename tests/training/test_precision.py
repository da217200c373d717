"""train.precision: bfloat16 autocast only where the device does it natively (auto), fp32 when
asked; weights stay fp32, the precision is part of the training's key, evaluation is fp32."""

from __future__ import annotations

import warnings

import pytest
import torch

from attn_pipeline.metrics import evaluate_reconstruction
from attn_pipeline.models import build_vae
from attn_pipeline.pipelines.train.nodes import training_description
from attn_pipeline.spec.config import ModelConfig, TrainConfig
from attn_pipeline.training.loop import fit
from attn_pipeline.training.precision import native_bf16, resolve_precision
from tests.conftest import MNIST_SHAPE, digit_like_images

CPU = torch.device("cpu")


def _native(answer: bool):
    return lambda device: (answer, "a CPU with avx512_bf16" if answer else "an AVX2-only CPU")


@pytest.mark.parametrize(
    ("wanted", "native", "used"),
    [
        ("auto", True, "bf16"),
        ("auto", False, "fp32"),
        ("fp32", True, "fp32"),
        ("bf16", True, "bf16"),
    ],
)
def test_auto_picks_bf16_only_where_it_is_native(wanted: str, native: bool, used: str) -> None:
    resolved = resolve_precision(wanted, CPU, native=_native(native))
    assert resolved.name == used
    assert ("avx512_bf16" in resolved.reason) == (native and wanted != "fp32")


def test_bf16_without_native_support_warns_that_it_is_slow() -> None:
    with pytest.warns(UserWarning, match="slower than fp32"):
        assert resolve_precision("bf16", CPU, native=_native(False)).name == "bf16"


def test_this_cpu_is_described() -> None:
    native, why = native_bf16(CPU)
    capabilities = torch.cpu.get_capabilities()
    assert native == bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))
    assert why


def _split(n: int = 200) -> torch.Tensor:
    images, _ = digit_like_images(n)
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


def test_the_precision_is_part_of_the_training_key() -> None:
    images = _split(60)
    split = {"images": images, "labels": torch.zeros(60, dtype=torch.long)}
    keys = [
        training_description(ModelConfig(), TrainConfig(precision=p), split, split)
        for p in ("fp32", "bf16")
    ]
    assert keys[0] != keys[1]


@pytest.mark.parametrize(
    "model",
    [
        ModelConfig(variant="none"),
        ModelConfig(variant="latent"),
        ModelConfig(variant="spatial", attention_loss_weight=1.0),
        ModelConfig(variant="spatial_gate", attention_loss_weight=1.0, attention_target="ink"),
        ModelConfig(variant="self", attention_resolution=7),
        ModelConfig(variant="cbam", attention_resolution=7),
        ModelConfig(variant="latent", backbone="mlp"),
    ],
    ids=lambda config: f"{config.variant}-{config.backbone}",
)
def test_every_variant_trains_under_bf16_autocast(model: ModelConfig) -> None:
    """One epoch of every variant in bf16: finite losses, fp32 weights (cbam's blend once
    failed there: lerp takes one dtype)."""
    images = _split(100)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(
            build_vae(model, MNIST_SHAPE),
            images,
            None,
            TrainConfig(epochs=1, batch_size=50, precision="bf16", device="cpu"),
            show_progress=False,
        )
    assert torch.isfinite(torch.tensor(result.history[0]["train/loss"]))
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


def test_a_bf16_training_keeps_fp32_weights_and_evaluates_in_fp32() -> None:
    images = _split()
    torch.manual_seed(0)
    model = build_vae(ModelConfig(variant="spatial_gate", attention_loss_weight=1.0), MNIST_SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # slow where bf16 is emulated: still correct
        result = fit(
            model,
            images[:150],
            images[150:],
            TrainConfig(epochs=2, batch_size=50, precision="bf16", device="cpu"),
            show_progress=False,
        )
    assert result.precision.name == "bf16"
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    losses = [row["train/loss"] for row in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0]

    seen = []
    forward = result.model.forward

    def recording(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(*args, **kwargs)

    result.model.forward = recording
    figures = evaluate_reconstruction(result.model, images[150:], seed=0)
    assert seen and not any(seen)  # evaluation never runs under autocast
    assert torch.isfinite(torch.tensor(figures.neg_elbo))
