"""The importance-weighted NLL, the feature extractor node, and binarised data."""

from __future__ import annotations

import pytest
import torch

from attn_pipeline.data.binarization import evaluation_images, is_binarized
from attn_pipeline.data.saved_state import ResultCache
from attn_pipeline.metrics import evaluate_reconstruction, importance_weighted_nll
from attn_pipeline.models import build_vae
from attn_pipeline.models.checkpoint import make_checkpoint
from attn_pipeline.models.classifier import load_feature_extractor, state_dict_hash
from attn_pipeline.pipelines.data_prep.nodes import split_training_file
from attn_pipeline.pipelines.evaluate.nodes import (
    _sizes,
    evaluate_model,
    measure_real_images,
    nll_subset,
)
from attn_pipeline.pipelines.feature_extractor import nodes as extractor_nodes
from attn_pipeline.spec.config import (
    DataPrepConfig,
    EvaluateConfig,
    FeatureExtractorConfig,
    ModelConfig,
    TrainConfig,
)
from attn_pipeline.training.loop import fit
from tests.conftest import MNIST_SHAPE, digit_like_images

#: one worker runs this file: its tests share a module fixture (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("likelihood_and_extractor")


def _split(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    images, labels = digit_like_images(n, seed=seed)
    return {
        "images": torch.from_numpy(images).float().div(255).unsqueeze(1),
        "labels": torch.from_numpy(labels).long(),
    }


@pytest.fixture(scope="module", params=["none", "spatial_gate"])
def trained_model(request):
    """A small trained model without and with the output gate (whose map of z changes
    every decode's logits)."""
    torch.manual_seed(0)
    model = build_vae(ModelConfig(variant=request.param, latent_dim=4), MNIST_SHAPE)
    x = _split(128)["images"]
    fit(
        model,
        x,
        None,
        TrainConfig(epochs=8, batch_size=32, learning_rate=3e-3),
        show_progress=False,
    )
    return model.eval(), x[:32]


def test_one_importance_sample_is_the_negative_elbo(trained_model) -> None:
    model, x = trained_model
    repeated = x.repeat(40, 1, 1, 1)  # many draws per image, to average the noise away
    k1 = importance_weighted_nll(model, repeated, samples=1, seed=1)
    elbo = evaluate_reconstruction(model, repeated, seed=2).neg_elbo
    standard_error = float(k1.std()) / len(k1) ** 0.5
    assert abs(float(k1.mean()) - elbo) < 4 * standard_error


def test_more_importance_samples_tighten_the_bound(trained_model) -> None:
    model, x = trained_model
    elbo = evaluate_reconstruction(model, x, seed=0).neg_elbo
    estimates = [
        float(importance_weighted_nll(model, x, samples=k, seed=3).mean()) for k in (1, 10, 100)
    ]
    assert estimates[0] > estimates[1] > estimates[2]
    assert estimates[2] <= elbo


def test_importance_batches_do_not_change_the_estimate_shape(trained_model) -> None:
    model, x = trained_model
    nll = importance_weighted_nll(model, x, samples=7, decodes_per_batch=50)
    assert nll.shape == (len(x),) and bool(torch.isfinite(nll).all())
    with pytest.raises(ValueError, match="must be positive"):
        importance_weighted_nll(model, x, samples=0)


def test_nll_subset_is_seeded_sorted_and_spread_over_the_test_file() -> None:
    subset = nll_subset(10_000, 2000, seed=0)
    assert torch.equal(subset, nll_subset(10_000, 2000, seed=0))
    assert not torch.equal(subset, nll_subset(10_000, 2000, seed=1))
    assert len(subset) == 2000 and len(set(subset.tolist())) == 2000
    assert torch.all(subset[1:] > subset[:-1])
    # not just the head of the file, whose first half is MNIST's easier writers
    assert 800 < int((subset >= 5000).sum()) < 1200
    assert torch.equal(nll_subset(30, None, seed=0), torch.arange(30))
    assert torch.equal(nll_subset(30, 50, seed=0), torch.arange(30))


def test_extractor_is_trained_once_and_then_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = _split(400), _split(100, seed=1)
    config = FeatureExtractorConfig(epochs=3, batch_size=50, learning_rate=3e-3)
    checkpoint, info = extractor_nodes.ensure_feature_extractor(
        None, None, train, test, config, "mnist"
    )
    assert info["test_accuracy"] > 0.9  # ten well-separated bar positions
    assert info["hash"] == state_dict_hash(checkpoint["state_dict"])
    assert "state_dict" not in info and info["dataset"] == "mnist"
    features = load_feature_extractor(checkpoint).features(test["images"][:5])
    assert features.shape == (5, 128)

    def no_training(*args, **kwargs):
        raise AssertionError("a stored extractor must not be trained again")

    monkeypatch.setattr(extractor_nodes, "fit_classifier", no_training)
    again, again_info = extractor_nodes.ensure_feature_extractor(
        checkpoint, None, train, test, config, "mnist"
    )
    assert again is checkpoint and again_info == info
    with pytest.raises(ValueError, match="trained on 'mnist', not 'fashion_mnist'"):
        extractor_nodes.ensure_feature_extractor(
            checkpoint, None, train, test, config, "fashion_mnist"
        )


def test_the_shipped_reference_stands_in_for_a_missing_extractor_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train, test = _split(400), _split(100, seed=1)
    shape = {"image_shape": list(MNIST_SHAPE), "state_dict": {}}
    stored = {"dataset": "mnist", "hash": "stored", "test_accuracy": 0.5, **shape}
    reference = {"dataset": "mnist", "hash": "reference", "test_accuracy": 0.99, **shape}
    trained = []
    monkeypatch.setattr(
        extractor_nodes, "fit_classifier", lambda *a, **k: trained.append(1) or _tiny_model()
    )
    config = FeatureExtractorConfig(epochs=1, batch_size=50)
    use = extractor_nodes.ensure_feature_extractor
    # the project folder's own extractor wins; then the reference; training only when off
    assert use(stored, reference, train, test, config, "mnist")[0] is stored
    assert use(None, reference, train, test, config, "mnist")[0] is reference
    assert trained == []
    off = config.model_copy(update={"use_reference": False})
    assert use(None, reference, train, test, off, "mnist")[0]["hash"] not in ("reference",)
    assert trained == [1]


def test_hash_follows_the_weights() -> None:
    state = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(3)}
    same = {k: v.clone() for k, v in state.items()}
    changed = {**same, "b": torch.tensor([0.0, 0.0, 1e-6])}
    assert state_dict_hash(state) == state_dict_hash(same) != state_dict_hash(changed)


def test_binarize_flags_the_splits_and_evaluates_on_one_fixed_draw() -> None:
    images, labels = digit_like_images(60)
    train, val = split_training_file(
        images, labels, DataPrepConfig(val_size=10, binarize=True), "mnist"
    )
    assert is_binarized(train) and is_binarized(val)
    assert train["images"].unique().numel() > 2  # stored as grey levels
    first, second = evaluation_images(val), evaluation_images(val)
    assert set(first.unique().tolist()) <= {0.0, 1.0} and torch.equal(first, second)
    grey, _ = split_training_file(images, labels, DataPrepConfig(val_size=10), "mnist")
    assert not is_binarized(grey) and torch.equal(evaluation_images(grey), grey["images"])


def _tiny_model() -> torch.nn.Module:
    from attn_pipeline.models.classifier import FeatureClassifier  # noqa: PLC0415

    return FeatureClassifier(image_shape=MNIST_SHAPE, n_classes=10, feature_dim=16).eval()


def test_the_test_images_are_measured_once_and_never_for_other_settings(tmp_path) -> None:
    """measure_real_images (a run's shared step) gives what the evaluation would measure
    itself: one measure serves every model; one made with another N (a shared step of other
    settings) is measured again, so the figures are those of the evaluation's own N."""
    train, test = _split(300), _split(120, seed=1)
    extractor, _ = extractor_nodes.ensure_feature_extractor(
        None, None, train, test, FeatureExtractorConfig(epochs=1, batch_size=50), "mnist"
    )
    torch.manual_seed(0)
    config = ModelConfig(variant="none", latent_dim=4)
    checkpoint = make_checkpoint(config, MNIST_SHAPE, build_vae(config, MNIST_SHAPE).state_dict())
    settings = EvaluateConfig(
        n_samples=100, nll_samples=2, nll_images=10, kid_subsets=3, kid_subset_size=20
    )
    shared = measure_real_images(test, extractor, settings)
    assert shared["features"].shape == (100, 128) and shared["radii"].shape == (100,)

    def evaluate(real: dict, folder: str) -> dict[str, float]:
        cache = ResultCache(tmp_path / folder)
        return evaluate_model(checkpoint, test, extractor, real, settings, cache)[0]

    other_n = measure_real_images(test, extractor, settings.model_copy(update={"n_samples": 50}))
    assert evaluate(shared, "a") == evaluate(other_n, "b")
    assert evaluate(shared, "a")["test/precision"] == evaluate(shared, "c")["test/precision"]


def test_n_and_the_kid_subset_are_what_the_test_set_allows() -> None:
    """evaluate.n_samples or kid_subset_size beyond the test set: the sizes used are the
    test set's (the evaluation warns and records them as the run's tags)."""
    assert _sizes(EvaluateConfig(n_samples=10000, kid_subset_size=1000), 300) == (300, 300)
    assert _sizes(EvaluateConfig(n_samples=40, kid_subset_size=20), 60) == (40, 20)
