"""The images' shape and class count come from the data: a data set of 32x32 colour images
with 4 classes goes through the extractor, training, evaluation and generation nodes."""

from __future__ import annotations

import pytest
import torch

from attn_pipeline.data.saved_state import CheckpointFolders, ResultCache
from attn_pipeline.models import build_vae
from attn_pipeline.models.classifier import FeatureClassifier, load_feature_extractor
from attn_pipeline.pipelines.evaluate.nodes import evaluate_model, measure_real_images
from attn_pipeline.pipelines.feature_extractor.nodes import ensure_feature_extractor
from attn_pipeline.pipelines.generate.nodes import (
    plot_attention_maps,
    render_images,
    render_steering,
)
from attn_pipeline.pipelines.train.nodes import train_model
from attn_pipeline.spec.config import (
    EvaluateConfig,
    FeatureExtractorConfig,
    GenerateConfig,
    ModelConfig,
    ScaleRectangleEdit,
    TrainConfig,
)

SHAPE = (3, 32, 32)
N_CLASSES = 4


def _colour_split(n: int, seed: int) -> dict[str, torch.Tensor | str]:
    """Random colour images whose class is the quadrant holding a bright square."""
    noise = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N_CLASSES, (n,), generator=noise)
    images = 0.2 * torch.rand(n, *SHAPE, generator=noise)
    for i, label in enumerate(labels.tolist()):
        top, left = 16 * (label // 2), 16 * (label % 2)
        images[i, :, top + 4 : top + 12, left + 4 : left + 12] = torch.rand(3, 1, 1)
    return {"images": images, "labels": labels, "dataset": "colour_squares"}


@pytest.mark.pipeline
def test_a_32x32_colour_data_set_trains_evaluates_and_draws_end_to_end(tmp_path) -> None:
    train, val, test = _colour_split(256, 0), _colour_split(64, 1), _colour_split(96, 2)
    extractor, described = ensure_feature_extractor(
        None, None, train, test, FeatureExtractorConfig(epochs=2, batch_size=64), "colour_squares"
    )
    assert described["image_shape"] == list(SHAPE)
    classifier = load_feature_extractor(extractor)
    assert classifier(test["images"][:2]).shape == (2, N_CLASSES)

    model = ModelConfig(variant="spatial_gate", latent_dim=4, attention_resolution=16)
    checkpoint, history, sampler, _ = train_model(
        train, val, model, TrainConfig(epochs=1, batch_size=64), CheckpointFolders(tmp_path)
    )
    assert checkpoint["image_shape"] == list(SHAPE) and len(history) == 1
    assert sampler(torch.zeros(2, 4)).shape == (2, *SHAPE)

    settings = EvaluateConfig(
        n_samples=64, nll_samples=2, nll_images=8, steer_samples=16, kid_subsets=2,
        kid_subset_size=16,
    )  # fmt: skip
    real = measure_real_images(test, extractor, settings)
    metrics, _ = evaluate_model(
        checkpoint, test, extractor, real, settings, ResultCache(tmp_path / "evaluations")
    )
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert "test/steer_emphasis_ink_share" in metrics

    edit = ScaleRectangleEdit(top=0, bottom=16, left=0, right=32, factor=8.0)
    generate = GenerateConfig(n_samples=8, n_reconstructions=8, n_interpolations=2, steering=edit)
    samples, _, _ = render_images(checkpoint, test, generate)
    assert samples.mode == "RGB" and samples.size == (8 * 34 + 2, 34 + 2)
    plot_attention_maps(checkpoint, test, generate)
    render_steering(checkpoint, test, generate)


def test_the_conv_backbone_names_the_attention_resolutions_an_image_size_allows() -> None:
    with pytest.raises(ValueError, match="use 8 or 16"):
        build_vae(ModelConfig(variant="spatial", attention_resolution=14), SHAPE)
    with pytest.raises(ValueError, match="multiple of 4"):
        build_vae(ModelConfig(variant="none"), (1, 30, 30))
    model = build_vae(ModelConfig(variant="self", attention_resolution=8), SHAPE)
    assert model.image_shape == SHAPE


def test_a_stored_extractor_of_other_images_is_refused_by_name() -> None:
    colour = _colour_split(64, 0)
    extractor, _ = ensure_feature_extractor(
        None, None, colour, colour, FeatureExtractorConfig(epochs=1, batch_size=64), "squares"
    )
    grey = {**colour, "images": colour["images"][:, :1]}
    with pytest.raises(ValueError, match=r"takes images of shape \(3, 32, 32\).*\(1, 32, 32\)"):
        ensure_feature_extractor(extractor, None, grey, grey, FeatureExtractorConfig(), "squares")


def test_a_steering_rectangle_outside_the_images_is_refused() -> None:
    from attn_pipeline.pipelines.generate.nodes import steering_edit  # noqa: PLC0415
    from attn_pipeline.spec.config import ConfigError  # noqa: PLC0415

    config = GenerateConfig(steering=ScaleRectangleEdit(top=0, bottom=20, left=0, right=40))
    with pytest.raises(ConfigError, match="outside the 32x32 images"):
        steering_edit(config, 32)
    assert steering_edit(config, 40) is not None


def test_an_empty_steering_rectangle_is_refused_before_any_node() -> None:
    """Ends in one unit are compared when the configuration is checked; pixels against a
    share of the side once the image size is known (a run reads it from the data before
    any node: tests/pipelines/test_pipeline_run.py)."""
    from pydantic import ValidationError  # noqa: PLC0415

    from attn_pipeline.pipelines.generate.nodes import steering_edit  # noqa: PLC0415
    from attn_pipeline.spec.config import ConfigError  # noqa: PLC0415

    for empty in ({"top": 10, "bottom": 10}, {"left": "60%", "right": "50%"}):
        with pytest.raises(ValidationError, match="empty rectangle"):
            ScaleRectangleEdit(**empty)
    mixed = GenerateConfig(steering=ScaleRectangleEdit(top=20, bottom="50%"))
    with pytest.raises(ConfigError, match="is empty"):
        steering_edit(mixed, 40)
    assert steering_edit(mixed, 80) is not None
    assert ScaleRectangleEdit().pixels(40) == (0, 20, 0, 40)


def test_a_steering_block_without_a_kind_changes_the_default_rectangle() -> None:
    """`--params generate.steering.bottom=20` names no `kind`: it is the rectangle's."""
    steering = GenerateConfig.model_validate({"steering": {"bottom": 20}}).steering
    assert steering == ScaleRectangleEdit(bottom=20)


def test_a_global_max_extractor_sees_the_same_glyph_anywhere_alike() -> None:
    torch.manual_seed(0)
    glyph = torch.rand(3, 8, 8)
    # far enough from the borders that no receptive field (26 pixels) seeing it meets them
    images = torch.zeros(2, 3, 80, 80)
    images[0, :, 28:36, 28:36] = glyph
    images[1, :, 40:48, 36:44] = glyph  # moved by multiples of the two pools' stride
    for pooling, alike in (("global_max", True), ("flatten", False)):
        extractor = FeatureClassifier(image_shape=(3, 80, 80), n_classes=N_CLASSES, pooling=pooling)
        features = extractor.eval().features(images)
        assert torch.allclose(features[0], features[1], atol=1e-6) is alike, pooling


def test_a_stored_extractor_of_other_pooling_is_refused_by_name() -> None:
    squares = _colour_split(64, 0)
    flatten = FeatureExtractorConfig(epochs=1, batch_size=64)
    extractor, _ = ensure_feature_extractor(None, None, squares, squares, flatten, "squares")
    pooled = flatten.model_copy(update={"pooling": "global_max"})
    with pytest.raises(ValueError, match="pools by 'flatten', but feature_extractor.pooling"):
        ensure_feature_extractor(extractor, None, squares, squares, pooled, "squares")
    trained, _ = ensure_feature_extractor(None, None, squares, squares, pooled, "squares")
    assert load_feature_extractor(trained)(squares["images"][:2]).shape == (2, N_CLASSES)
