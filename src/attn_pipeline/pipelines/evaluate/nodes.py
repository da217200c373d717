"""Test-set metrics of each variant, and one table that puts them side by side."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import pandas as pd
import torch

from attn_pipeline import metrics as metrics_package
from attn_pipeline import models
from attn_pipeline.data import binarization
from attn_pipeline.data.binarization import evaluation_images, is_binarized
from attn_pipeline.data.fingerprints import (
    combined_fingerprint,
    result_description,
    tensor_fingerprint,
)
from attn_pipeline.data.saved_state import ResultCache
from attn_pipeline.metrics import (
    ClassifierView,
    RealImages,
    classifier_view,
    evaluate_reconstruction,
    generation_metrics,
    importance_weighted_nll,
    move_metrics,
    prior_samples,
    real_images,
    reconstructions,
    steerable,
    steering_metrics,
)
from attn_pipeline.metrics.scenes import scene_metrics
from attn_pipeline.models import load_checkpoint
from attn_pipeline.models.checkpoint import check_trained_on
from attn_pipeline.models.classifier import load_feature_extractor
from attn_pipeline.spec.config import EvaluateConfig
from attn_pipeline.training.loop import resolve_device

logger = logging.getLogger(__name__)

#: What ``test/nll_iw`` is a likelihood of, by how the model was trained.
LIKELIHOODS = {
    True: "bernoulli, dynamically binarised test images (comparable with published MNIST NLL)",
    False: "bernoulli on grey levels: an importance-weighted bound, not a normalised likelihood",
}


def nll_subset(n_images: int, size: int | None, *, seed: int) -> torch.Tensor:
    """Indices of the test images the importance-weighted NLL averages over.

    A seeded random subset of ``size`` (sorted; all images when ``size`` is None or not
    smaller), the same for every variant at the same seed. Random rather than the first
    ``size``: MNIST's test file is ordered by writer group (the first 5,000 are the easier).
    """
    if size is None or size >= n_images:
        return torch.arange(n_images)
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    return order[:size].sort().values


def _sizes(config: EvaluateConfig, n_images: int) -> tuple[int, int]:
    """(N, the KID's subset size): as configured, at most what the test set has."""
    n = min(config.n_samples, n_images)
    return n, min(config.kid_subset_size, n)


def _real_images_key(
    test_set: dict[str, torch.Tensor], feature_extractor: dict[str, Any], config: EvaluateConfig
) -> dict[str, Any]:
    return {
        "feature_extractor_hash": feature_extractor["hash"],
        "test_images": tensor_fingerprint(test_set["images"]),
        "n": _sizes(config, len(test_set["images"]))[0],
        "k": config.precision_recall_k,
    }


def measure_real_images(
    test_set: dict[str, torch.Tensor], feature_extractor: dict[str, Any], config: EvaluateConfig
) -> dict[str, Any]:
    """The extractor's view of the first N test images and their k-NN radii: what every
    model's FID-/KID-proxy and precision/recall compare with. Computed once per run (a
    study's shared step) rather than once per model; what it was computed from goes with
    it, so that an evaluation of other settings does not use it."""
    key = _real_images_key(test_set, feature_extractor, config)
    device = resolve_device(config.device)
    extractor = load_feature_extractor(feature_extractor).to(
        device, memory_format=torch.channels_last
    )
    extractor.check_input(test_set["images"], "the test images")
    real = real_images(extractor, test_set["images"][: key["n"]], k=key["k"])
    return {
        **key,
        "features": real.view.features,
        "probabilities": real.view.probabilities,
        "radii": real.radii,
    }


def _real_images(
    measured: dict[str, Any],
    test_set: dict[str, torch.Tensor],
    feature_extractor: dict[str, Any],
    config: EvaluateConfig,
) -> RealImages:
    """``measured`` as :class:`RealImages`, or measured again where it was made from
    another extractor, test set, N or k (a namespace run after a shared step of other
    settings)."""
    key = _real_images_key(test_set, feature_extractor, config)
    if any(measured.get(name) != value for name, value in key.items()):
        logger.info("the stored test_real_images are of other settings: measured again")
        measured = measure_real_images(test_set, feature_extractor, config)
    view = ClassifierView(measured["features"], measured["probabilities"])
    return RealImages(view=view, radii=measured["radii"], k=measured["k"])


def evaluation_description(
    checkpoint: dict[str, Any],
    test_set: dict[str, torch.Tensor],
    feature_extractor: dict[str, Any],
    config: EvaluateConfig,
) -> dict[str, Any]:
    """Everything an evaluation's figures depend on: the weights, the test images, the
    extractor, the settings and the code that measures."""
    return result_description(
        (metrics_package, models, binarization, sys.modules[__name__]),
        model=checkpoint["model_config"],
        weights=checkpoint["state_dict"],
        test_images=test_set["images"],
        binarized=is_binarized(test_set),
        feature_extractor_hash=feature_extractor["hash"],
        evaluate=config,
    )


def evaluate_model(
    checkpoint: dict[str, Any],
    test_set: dict[str, torch.Tensor],
    feature_extractor: dict[str, Any],
    test_real_images: dict[str, Any],
    config: EvaluateConfig,
    evaluation_cache: ResultCache,
    object_classifier: dict[str, Any] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """``test/*`` metrics of one trained variant and the facts needed to read them, kept
    in ``evaluation_cache``: the same weights evaluated the same way are not evaluated
    again (a rerun of a study goes straight past its finished cells).

    Returns:
        The metrics: the negative ELBO, reconstruction BCE and MSE, KL
        (:class:`ReconstructionMetrics`); the importance-weighted NLL with K samples on
        ``nll_images`` of the test images;
        the FID-proxy of N prior samples and of N reconstructions against N test images,
        the KID-proxy, precision, recall, sample confidence and class coverage; for
        variants with an editable map, the steering benchmark's ``steer_*``
        (:func:`~attn_pipeline.metrics.steering_metrics`) and the move benchmark's
        ``move_*`` (:func:`~attn_pipeline.metrics.move_metrics`), and nothing of them for
        the others; for the ``objects`` variant, given ``object_classifier`` (a classifier
        of the scenes' digits, the raw data set's reference extractor: the node's seventh
        input for ``objects`` entries), the scene benchmark's ``scene_*``
        (:func:`~attn_pipeline.metrics.scenes.scene_metrics`).
        The evaluation's description (tags for MLflow): N, K, the NLL's image count, the
        extractor's hash, and which likelihood ``test/nll_iw`` is.
    """
    check_trained_on(checkpoint, test_set)  # before the cache: no figures of another data set
    description = evaluation_description(checkpoint, test_set, feature_extractor, config)
    if object_classifier is not None:
        description["object_classifier_hash"] = object_classifier["hash"]
    stored = evaluation_cache.get(description)
    if stored is not None:
        logger.info(
            "already evaluated (%s): the stored figures are reused", evaluation_cache.folder
        )
        return stored["test_metrics"], stored["evaluation_info"]
    real = _real_images(test_real_images, test_set, feature_extractor, config)
    test_metrics, evaluation_info = _evaluate(
        checkpoint, test_set, feature_extractor, real, config, object_classifier
    )
    evaluation_cache.put(
        description, {"test_metrics": test_metrics, "evaluation_info": evaluation_info}
    )
    return test_metrics, evaluation_info


def _evaluate(
    checkpoint: dict[str, Any],
    test_set: dict[str, torch.Tensor],
    feature_extractor: dict[str, Any],
    real: RealImages,
    config: EvaluateConfig,
    object_classifier: dict[str, Any] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    started = time.perf_counter()
    device = resolve_device(config.device)
    model, model_config = load_checkpoint(checkpoint)
    # channels_last weights let oneDNN pick faster conv kernels for the K decodes per image
    # of the importance-weighted NLL (a no-op for the MLP)
    model.to(device, memory_format=torch.channels_last)
    images = evaluation_images(test_set)  # binary draws for a model trained on binary pixels
    metrics = evaluate_reconstruction(
        model, images, batch_size=config.batch_size, seed=config.seed
    ).as_dict()
    nll_images = images[nll_subset(len(images), config.nll_images, seed=config.seed)]
    # a line per stage: an evaluation takes minutes on a CPU, and is never silent that long
    logger.info(
        "evaluating: ELBO done (%.0f s); importance-weighted NLL, K = %d on %d images",
        time.perf_counter() - started,
        config.nll_samples,
        len(nll_images),
    )
    nll = importance_weighted_nll(model, nll_images, samples=config.nll_samples, seed=config.seed)
    metrics["nll_iw"] = float(nll.mean())

    # channels_last: oneDNN's faster convolution kernels for the extractor (same features)
    extractor = load_feature_extractor(feature_extractor).to(
        device, memory_format=torch.channels_last
    )
    n, kid_subset_size = _sizes(config, len(test_set["images"]))
    for key, asked, used in (
        ("n_samples", config.n_samples, n),
        ("kid_subset_size", config.kid_subset_size, kid_subset_size),
    ):
        if used < asked:
            logger.warning(
                "evaluate.%s is %d but the test set has %d images: %d used (recorded as "
                "the run's tags); figures from runs with other sizes do not compare",
                key,
                asked,
                len(test_set["images"]),
                used,
            )
    logger.info(
        "evaluating: NLL done (%.0f s); FID-/KID-proxy, precision and recall, N = %d",
        time.perf_counter() - started,
        n,
    )
    # grey levels: the data the samples should match, measured once (measure_real_images)
    metrics |= generation_metrics(
        real=real,
        samples=classifier_view(extractor, prior_samples(model, n, seed=config.seed)),
        recon=classifier_view(extractor, reconstructions(model, test_set["images"][:n])),
        kid_subsets=config.kid_subsets,
        kid_subset_size=kid_subset_size,
        seed=config.seed,
    )
    if steerable(model):
        logger.info(
            "evaluating: generation figures done (%.0f s); the steering benchmark, %d samples",
            time.perf_counter() - started,
            config.steer_samples,
        )
        metrics |= steering_metrics(model, extractor, n=config.steer_samples, seed=config.seed)
        metrics |= move_metrics(model, extractor, n=config.steer_samples, seed=config.seed)
    if object_classifier is not None:
        logger.info(
            "evaluating: generation figures done (%.0f s); the scene benchmark, %d test "
            "scenes and %d prior samples",
            time.perf_counter() - started,
            len(images),
            config.steer_samples,
        )
        classifier = load_feature_extractor(object_classifier).to(device)
        metrics |= scene_metrics(
            model, classifier, test_set, n_prior=config.steer_samples, seed=config.seed
        )
    not_finite = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if not_finite:
        raise ValueError(
            f"evaluation of variant '{model_config.variant}' gave non-finite test metrics "
            f"{not_finite}: the model's outputs are not finite (a diverged training?). "
            "Nothing was written; retrain it with a lower train.learning_rate."
        )
    description = {
        # the images behind every figure: a study refuses to pair cells where it differs
        "data_hash": combined_fingerprint(*_image_hashes(checkpoint, test_set).values()),
        "feature_extractor_hash": feature_extractor["hash"],
        "feature_extractor_test_accuracy": feature_extractor["test_accuracy"],
        "fid_n_samples": n,
        "kid_subset_size": kid_subset_size,
        "nll_iw_k": config.nll_samples,
        "nll_iw_n_images": len(nll_images),
        "nll_iw_likelihood": LIKELIHOODS[is_binarized(test_set)],
        "n_test_images": len(images),
    }
    logger.info(
        "evaluated in %.0f s: %s",
        time.perf_counter() - started,
        "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
    )
    return {f"test/{k}": v for k, v in metrics.items()}, description


def tabulate_test_metrics(**metrics_by_variant: dict[str, float]) -> pd.DataFrame:
    """One row per variant, one column per metric (without the ``test/`` prefix)."""
    rows = [
        {"variant": variant, **{k.removeprefix("test/"): v for k, v in metrics.items()}}
        for variant, metrics in metrics_by_variant.items()
    ]
    return pd.DataFrame(rows)


def _image_hashes(
    checkpoint: dict[str, Any], test_set: dict[str, torch.Tensor]
) -> dict[str, str | None]:
    """The hashes of the images behind a model's figures, by MLflow's dataset context: the
    training and validation images its checkpoint records (``None`` where it does not) and
    the test images."""
    trained_on = checkpoint.get("data") or {}
    return {
        "training": trained_on.get("train_images"),
        "validation": trained_on.get("val_images"),
        "test": tensor_fingerprint(test_set["images"]),
    }


def data_inputs(
    checkpoint: dict[str, Any], test_set: dict[str, torch.Tensor], dataset: str
) -> dict[str, dict[str, str]]:
    """The images a model was trained, validated and tested on, by context (MLflow's
    ``mlflow.data.context``): each one's name and content hash, as the run's dataset inputs
    (the Dataset column of MLflow's runs table). A checkpoint that does not record its
    training images names the test set alone."""
    split = {"training": "train", "validation": "val", "test": "test"}
    return {
        context: {"name": f"{dataset}_{split[context]}", "digest": digest}
        for context, digest in _image_hashes(checkpoint, test_set).items()
        if digest
    }
