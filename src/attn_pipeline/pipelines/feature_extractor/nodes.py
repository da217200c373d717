"""Train (only when none is stored) the classifier whose features the FID-proxy compares."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F

from attn_pipeline.models.classifier import (
    FeatureClassifier,
    extractor_image_shape,
    state_dict_hash,
)
from attn_pipeline.spec.config import FeatureExtractorConfig
from attn_pipeline.training.loop import resolve_device
from attn_pipeline.training.precision import resolve_precision

logger = logging.getLogger(__name__)


@torch.no_grad()
def classifier_accuracy(model: FeatureClassifier, split: dict[str, torch.Tensor]) -> float:
    """Fraction of ``split``'s images whose label is the classifier's top class."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(split["images"]), 1000):
        x = split["images"][start : start + 1000].to(device)
        y = split["labels"][start : start + 1000].to(device)
        correct += int((model(x).argmax(1) == y).sum())
    return correct / len(split["images"])


def fit_classifier(
    train_set: dict[str, torch.Tensor], config: FeatureExtractorConfig
) -> FeatureClassifier:
    """Adam on cross-entropy, seeded; batches drawn by indexing the in-memory tensors."""
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    logger.info("feature extractor: training in %s (%s)", precision.name, precision.reason)
    torch.manual_seed(config.seed)
    model = FeatureClassifier(
        image_shape=tuple(train_set["images"].shape[1:]),
        n_classes=int(train_set["labels"].max()) + 1,
        feature_dim=config.feature_dim,
        pooling=config.pooling,
    ).to(device)
    images, labels = train_set["images"].to(device), train_set["labels"].to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    order = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, config.epochs + 1):
        model.train()
        started = time.perf_counter()
        permutation = torch.randperm(len(images), generator=order).to(device)
        total = torch.zeros((), device=device)
        for start in range(0, len(images), config.batch_size):
            index = permutation[start : start + config.batch_size]
            with precision.autocast(device):
                logits = model(images[index])
            loss = F.cross_entropy(logits.float(), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
        logger.info(
            "feature extractor epoch %d/%d  loss=%.4f  (%.1f s)",
            epoch,
            config.epochs,
            float(total) / len(images),
            time.perf_counter() - started,
        )
    return model.to("cpu").eval()


def ensure_feature_extractor(
    stored: dict[str, Any] | None,
    reference: dict[str, Any] | None,
    train_set: dict[str, torch.Tensor],
    test_set: dict[str, torch.Tensor],
    config: FeatureExtractorConfig,
    dataset: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The extractor of ``dataset`` stored in the project folder if there is one, else the
    reference shipped with the package (``config.use_reference``), else a newly trained one.

    Returns the extractor checkpoint (weights, config, test accuracy, content hash) and
    its description for the reports. To train a new one, delete the stored file and set
    ``feature_extractor.use_reference: false``.
    """
    if stored is None and config.use_reference and reference is not None:
        logger.info("no stored feature extractor: using the reference shipped with the package")
        stored = reference
    if stored is not None:
        if stored.get("dataset") != dataset:
            raise ValueError(
                f"the stored feature extractor was trained on '{stored.get('dataset')}', not "
                f"'{dataset}': check the catalog path of stored_feature_extractor, or delete "
                "the file to train a new one"
            )
        if extractor_image_shape(stored) != tuple(train_set["images"].shape[1:]):
            raise ValueError(
                f"the stored feature extractor of '{dataset}' takes images of shape "
                f"{extractor_image_shape(stored)}, but the data's are "
                f"{tuple(train_set['images'].shape[1:])}: delete it to train a new one "
                "(with feature_extractor.use_reference: false)"
            )
        stored_pooling = FeatureExtractorConfig.model_validate(stored.get("config", {})).pooling
        if stored_pooling != config.pooling:
            raise ValueError(
                f"the stored feature extractor of '{dataset}' pools by '{stored_pooling}', "
                f"but feature_extractor.pooling is '{config.pooling}': delete it to train a "
                "new one (with feature_extractor.use_reference: false), or set the pooling "
                "it was trained with"
            )
        logger.info(
            "using the stored feature extractor %s (test accuracy %.4f)",
            stored["hash"],
            stored["test_accuracy"],
        )
        return stored, describe_extractor(stored)
    started = time.perf_counter()
    model = fit_classifier(train_set, config)
    accuracy = classifier_accuracy(model, test_set)
    state = model.state_dict()
    checkpoint = {
        "dataset": dataset,
        "config": config.model_dump(mode="json"),
        "image_shape": list(train_set["images"].shape[1:]),
        "state_dict": state,
        "test_accuracy": accuracy,
        "n_test_images": len(test_set["images"]),
        "hash": state_dict_hash(state),
        "train_seconds": time.perf_counter() - started,
    }
    logger.info("feature extractor %s: test accuracy %.4f", checkpoint["hash"], accuracy)
    if accuracy < config.min_test_accuracy:
        logger.warning(
            "the feature extractor's test accuracy %.4f is below feature_extractor."
            "min_test_accuracy %.4f: raise feature_extractor.epochs and delete %s's stored "
            "extractor to train again",
            accuracy,
            config.min_test_accuracy,
            dataset,
        )
    return checkpoint, describe_extractor(checkpoint)


def describe_extractor(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What the reports say of an extractor: everything but the weights."""
    return {key: value for key, value in checkpoint.items() if key != "state_dict"}
