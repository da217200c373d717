"""The ``objects`` variant: a grid of objects, each placed by its cell of the map, drawn at
whole pixels out of training, and moved, removed, added or swapped alone."""

from __future__ import annotations

import math

import pytest
import torch

from attn_pipeline.metrics.scenes import edit_metrics, outside_windows, windows_at
from attn_pipeline.models import build_vae, scene_edits
from attn_pipeline.models.classifier import FeatureClassifier
from attn_pipeline.models.losses import training_objective, vae_loss_terms
from attn_pipeline.models.objects import (
    PRES,
    PRESENCE_PRIOR,
    PRESENCE_THRESHOLD,
    CellLayout,
    CellRegions,
)
from attn_pipeline.models.where import cut_window, place_glyph
from attn_pipeline.spec.config import ModelConfig

CANVAS = (1, 64, 64)
LAYOUT = CellLayout(canvas=64, cells=4, glyph=28, what=4)


def _objects(**settings: object) -> ModelConfig:
    defaults = {"latent_dim": 4, "hidden_dim": 32, "glyph_size": 28, "attention_resolution": 4}
    return ModelConfig(variant="objects", backbone="mlp", **(defaults | settings))


def _scene(cells: dict[int, tuple[float, float]], seed: int = 0) -> torch.Tensor:
    """A code ``(1, D)`` with an object in each of ``cells`` at the given centre (pixels)."""
    noise = torch.Generator().manual_seed(seed)
    code = LAYOUT.split(torch.randn(1, LAYOUT.latent_dim, generator=noise)).clone()
    code[..., PRES] = scene_edits.ABSENT  # an empty scene, then its objects added
    z = code.flatten(1)
    for cell, centre in cells.items():
        what = torch.randn(1, LAYOUT.what, generator=noise)
        z = scene_edits.add(LAYOUT, z, torch.tensor([centre]), what)
        assert int(LAYOUT.cell_of(torch.tensor(centre))) == cell
    return z


def test_the_objects_variant_needs_a_glyph_size_and_a_grid_that_fits() -> None:
    with pytest.raises(ValueError, match="set model.glyph_size"):
        ModelConfig(variant="objects")
    with pytest.raises(
        ValueError, match="must divide the 64-pixel canvas into cells whose side is a power of two"
    ):
        build_vae(_objects(attention_resolution=3), CANVAS)


def test_presence_has_its_prior_probability_under_the_normal_prior() -> None:
    standard = torch.distributions.Normal(0.0, 1.0)
    assert 1 - float(standard.cdf(torch.tensor(PRESENCE_THRESHOLD))) == pytest.approx(
        PRESENCE_PRIOR, abs=1e-6
    )


def test_placing_and_reading_windows_by_matrices_is_grid_samples_bilinear() -> None:
    """The cells' regions and shift matrices give the values ``grid_sample`` gives (the
    ``where`` variant's placement and window cut), at fractional centres too."""
    regions = CellRegions(LAYOUT)
    noise = torch.Generator().manual_seed(0)
    glyphs = torch.rand(2, 16, 1, 28, 28, generator=noise)
    centres = LAYOUT.centres(torch.randn(2, 16, 2, generator=noise))
    rows, cols = (m[:, None] for m in regions.shifts(centres))
    placed = (rows @ glyphs.flatten(0, 1) @ cols.transpose(-1, -2)).view(2, 16, 1, 46, 46)
    for cell in (0, 5, 15):
        alone = torch.zeros_like(placed)
        alone[:, cell] = placed[:, cell]
        expected = place_glyph(glyphs[:, cell], centres[:, cell], 64, torch.zeros(()))
        torch.testing.assert_close(regions.paste_max(alone), expected, atol=1e-5, rtol=0)
    canvas = torch.rand(2, 1, 64, 64, generator=noise)
    windows = rows.transpose(-1, -2) @ regions.cut(canvas).flatten(0, 1) @ cols
    expected = cut_window(canvas.repeat_interleave(16, 0), centres.flatten(0, 1), 28)
    torch.testing.assert_close(windows, expected, atol=1e-5, rtol=0)


def test_shapes_gradients_and_a_presence_map() -> None:
    model = build_vae(_objects(), CANVAS)
    x = torch.rand(3, *CANVAS)
    out = model(x)
    assert model.latent_dim == 16 * (3 + 4) and out.mu.shape == (3, 16 * 7)
    assert out.logits.shape == (3, *CANVAS) and model.image_shape == CANVAS
    assert out.attention["presence"].shape == (3, 1, 4, 4)
    training_objective(vae_loss_terms(out, x), beta=1.0).backward()
    assert all(p.grad is not None for p in model.parameters())


@torch.no_grad()
def test_out_of_training_a_moved_object_is_the_same_glyph_shifted_by_whole_pixels() -> None:
    torch.manual_seed(0)
    model = build_vae(_objects(), CANVAS).eval()
    z = _scene({5: (20.3, 22.6)})  # a fractional centre: drawn at (20, 23)
    before = torch.sigmoid(model.decode(z).logits)
    moved = scene_edits.move(LAYOUT, z, 5, torch.tensor([[42.0, 45.0]]))
    after = torch.sigmoid(model.decode(moved).logits)
    assert int(scene_edits.present_cells(LAYOUT, moved).sum()) == 1
    torch.testing.assert_close(
        windows_at(after, torch.tensor([[42, 45]]), 28),
        windows_at(before, torch.tensor([[20, 23]]), 28),
        atol=1e-6,
        rtol=0,
    )


@torch.no_grad()
def test_each_edit_changes_its_objects_alone() -> None:
    """Remove, move, add and swap leave every pixel outside the edited objects' windows as
    it was, and refuse a box whose cell holds another object."""
    torch.manual_seed(0)
    model = build_vae(_objects(), CANVAS).eval()
    z = _scene({0: (14.0, 14.0), 3: (14.0, 50.0), 12: (50.0, 14.0)})

    def draw(code: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model.decode(code).logits)

    before = draw(z)
    old, new = torch.tensor([[14.0, 14.0]]), torch.tensor([[50.0, 50.0]])
    for edited, windows in (
        (scene_edits.remove(LAYOUT, z, 0), [old]),
        (scene_edits.move(LAYOUT, z, 0, new), [old, new]),
        (scene_edits.add(LAYOUT, z, new, torch.zeros(1, 4)), [new]),
    ):
        outside = outside_windows(64, windows, 28)
        assert torch.equal(draw(edited)[:, 0][outside], before[:, 0][outside])
    swapped = draw(scene_edits.swap(LAYOUT, z, 0, 3))
    torch.testing.assert_close(
        windows_at(swapped, torch.tensor([[14, 14]]), 28),
        windows_at(before, torch.tensor([[14, 50]]), 28),
    )
    with pytest.raises(ValueError, match="holds another object"):
        scene_edits.move(LAYOUT, z, 0, torch.tensor([[14.0, 50.0]]))
    with pytest.raises(ValueError, match="holds an object already"):
        scene_edits.add(LAYOUT, z, torch.tensor([[50.0, 14.0]]), torch.zeros(1, 4))


@torch.no_grad()
def test_the_edit_benchmark_measures_each_edit_on_every_scene_with_an_object() -> None:
    torch.manual_seed(0)
    model = build_vae(_objects(), CANVAS).eval()
    classifier = FeatureClassifier(image_shape=(1, 28, 28), n_classes=10).eval()
    z = torch.cat([_scene({0: (14.0, 14.0), 5: (30.0, 30.0)}, 1), _scene({}, 9)])
    z = torch.cat([z, _scene({10: (40.0, 40.0)}, 3)])
    figures = edit_metrics(model, classifier, z, seed=0)
    assert figures["edited_scenes"] == 2  # the empty scene is left alone
    for name in ("move_change_outside", "remove_change_outside", "add_change_outside"):
        assert figures[name] == 0.0  # the other objects' pixels, exactly as they were
    for name in ("move_in_box", "move_class_kept", "add_class_kept", "swap_class_kept"):
        assert 0.0 <= figures[name] <= 1.0 and not math.isnan(figures[name])
