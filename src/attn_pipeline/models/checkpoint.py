"""Checkpoints: a state dict plus the config that rebuilds the module around it.

A checkpoint holds only tensors and plain values, so it loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

import torch

from attn_pipeline.spec.config import ModelConfig

from .vae import VAE, build_vae

#: The key naming a split's data set (in a split, and in a checkpoint's ``data``).
DATASET = "dataset"


def make_checkpoint(
    model_config: ModelConfig,
    image_shape: tuple[int, int, int],
    state_dict: dict[str, torch.Tensor],
    **meta: Any,
) -> dict[str, Any]:
    """Bundle ``state_dict`` with what rebuilds its model (the model config as plain values
    and the images' ``(C, H, W)``) and extra metadata."""
    return {
        "model_config": model_config.model_dump(mode="json"),
        "image_shape": list(image_shape),
        "state_dict": state_dict,
        **meta,
    }


def _model_and_shape(checkpoint: dict[str, Any]) -> tuple[ModelConfig, tuple[int, int, int]]:
    values = dict(checkpoint["model_config"])
    # a checkpoint without ``image_shape`` carries the images' size in its model config
    channels, size = values.pop("image_channels", 1), values.pop("image_size", 28)
    shape = checkpoint.get("image_shape") or (channels, size, size)
    return ModelConfig.model_validate(values), tuple(shape)


def check_trained_on(checkpoint: dict[str, Any], split: dict[str, Any]) -> None:
    """Refuse a model trained on another data set than ``split``'s (a data split as
    data_prep makes it, which names its data set): its figures would be reported as that
    data set's. A checkpoint records its data set and training images' hash under
    ``data``."""
    trained_on = (checkpoint.get("data") or {}).get(DATASET)
    wanted = split.get(DATASET)
    if trained_on is not None and wanted is not None and trained_on != wanted:
        raise ValueError(
            f"this model was trained on {trained_on} (training images "
            f"{checkpoint['data'].get('train_images')}), but the run's data set is {wanted}: "
            f"train it on {wanted} first (`kedro run --pipelines train`, with the {wanted} "
            "environment), or run with the data set it was trained on"
        )


def load_checkpoint(
    checkpoint: dict[str, Any], for_split: dict[str, Any] | None = None
) -> tuple[VAE, ModelConfig]:
    """Rebuild the model a checkpoint describes, in eval mode on the CPU; with ``for_split``,
    only if it was trained on that split's data set (:func:`check_trained_on`)."""
    if for_split is not None:
        check_trained_on(checkpoint, for_split)
    config, image_shape = _model_and_shape(checkpoint)
    model = build_vae(config, image_shape)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), config
