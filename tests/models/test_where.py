"""The ``where`` variant: a latent position, its map, and a glyph drawn where the map puts
its weight; box edits move the glyph whole."""

from __future__ import annotations

import pytest
import torch

from attn_pipeline.metrics.steering import QUADRANTS, move_metrics, pixel_box
from attn_pipeline.models import build_vae
from attn_pipeline.models.classifier import FeatureClassifier
from attn_pipeline.models.losses import training_objective, vae_loss_terms
from attn_pipeline.models.steering import MoveToRectangle
from attn_pipeline.models.where import GlyphCentres, cut_window, ink_centroid, place_glyph
from attn_pipeline.spec.config import ModelConfig

CANVAS = (1, 40, 40)


def _where(**settings: object) -> ModelConfig:
    return ModelConfig(
        variant="where", latent_dim=4, glyph_size=28, attention_resolution=20, **settings
    )


def test_the_where_variant_needs_a_glyph_size_and_no_attention_loss() -> None:
    with pytest.raises(ValueError, match="set model.glyph_size"):
        ModelConfig(variant="where")
    with pytest.raises(ValueError, match="set attention_loss_weight to 0"):
        _where(attention_loss_weight=1.0)
    with pytest.raises(ValueError, match="smaller than the images' side"):
        build_vae(_where(), (1, 28, 28))


def test_shapes_and_a_latent_with_two_more_dimensions() -> None:
    model = build_vae(_where(), CANVAS).eval()
    x = torch.rand(3, *CANVAS)
    out = model(x)
    assert model.latent_dim == 6 and out.mu.shape == (3, 6)
    assert out.logits.shape == (3, *CANVAS) and model.image_shape == CANVAS
    assert out.attention["spatial"].shape == (3, 1, 20, 20)
    assert torch.allclose(out.attention["spatial"].sum(dim=(-2, -1)), torch.ones(3, 1))
    training_objective(vae_loss_terms(model(x), x), beta=1.0).backward()
    assert all(p.grad is not None for p in model.generator.decoder.parameters())


def test_centres_and_codes_are_inverse_and_the_prior_covers_the_whole_range() -> None:
    centres = GlyphCentres(40, 28)
    inside = torch.tensor([[14.5, 25.5], [20.0, 16.0]])
    assert torch.allclose(centres.centre(centres.code(inside)), inside, atol=1e-4)
    drawn = centres.centre(torch.randn(20000, 2, generator=torch.Generator().manual_seed(0)))
    assert drawn.min() >= 14 and drawn.max() <= 26  # a whole glyph on the canvas, always
    assert abs(float(drawn.mean()) - 20) < 0.1  # uniform over [14, 26]


def test_a_placed_glyph_is_cut_back_out_unchanged() -> None:
    glyph = torch.zeros(1, 1, 28, 28)
    glyph[0, 0, 6:20, 10:16] = 5.0
    centre = torch.tensor([[17.0, 23.0]])
    canvas = place_glyph(glyph, centre, 40, torch.tensor(-6.0))
    assert torch.allclose(cut_window(canvas + 6.0, centre, 28) - 6.0, glyph, atol=1e-5)
    assert torch.allclose(
        ink_centroid((torch.sigmoid(canvas) > 0.5).float()), torch.tensor([[16.0, 22.0]])
    )


def test_a_box_edit_moves_the_glyph_into_the_box_unchanged() -> None:
    torch.manual_seed(0)
    model = build_vae(_where(), CANVAS).eval()
    z = torch.randn(16, model.latent_dim)
    glyph, _ = model.generator.decoder(z[:, :-2])  # the glyph z_what draws, (16, 1, 28, 28)
    background = model.generator.placement.background
    for box in QUADRANTS.values():
        bounds = pixel_box(box, 40)
        decoded = model.decode(z, MoveToRectangle(**bounds, image_size=40))
        centre = model.generator.spatial_map.centre_of(decoded.attention["spatial"])
        # the box's centre, clamped to where a whole glyph fits
        expected_row = float(min(max((bounds["top"] + bounds["bottom"]) / 2, 14), 26))
        assert torch.allclose(centre[:, 0], torch.full((16,), expected_row), atol=1e-4)
        # the same glyph, whole, around that centre
        window = cut_window(decoded.logits - background, centre, 28) + background
        assert torch.allclose(window, glyph, atol=1e-4)
    with pytest.raises(ValueError, match="covers no cell"):
        model.decode(z, MoveToRectangle(top=0, bottom=1, left=0, right=1, image_size=40))


def test_move_metrics_of_a_where_model_and_refused_without_a_map() -> None:
    torch.manual_seed(0)
    extractor = FeatureClassifier(image_shape=CANVAS, n_classes=10).eval()
    model = build_vae(_where(), CANVAS).eval()
    metrics = move_metrics(model, extractor, n=64, seed=0, batch_size=32)
    assert set(metrics) == {
        "move_in_box",
        "move_ink_share",
        "move_confidence_ratio",
        "move_class_kept",
    }
    assert metrics["move_in_box"] > 0.9  # even untrained: the glyph goes where the box is
    with pytest.raises(ValueError, match="spatial map"):
        move_metrics(build_vae(ModelConfig(latent_dim=4), CANVAS), extractor, n=8, seed=0)
