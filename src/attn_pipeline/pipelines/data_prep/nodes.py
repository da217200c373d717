"""Raw IDX arrays to model-input tensors: checked, scaled to [0, 1], split, optionally subset."""

from __future__ import annotations

import logging
import zlib

import numpy as np
import torch

from attn_pipeline.data.binarization import FLAG as BINARIZED
from attn_pipeline.models.checkpoint import DATASET
from attn_pipeline.spec.config import ConfigError, DataPrepConfig

logger = logging.getLogger(__name__)

#: A split as saved to ``data/05_model_input``: float images (N, 1, H, W) (on a canvas of
#: side ``data_prep.canvas_size`` when one is set), int64 labels (N,),
#: the flag ``binarized`` (a bool tensor, see :mod:`attn_pipeline.data.binarization`) and the
#: name of its data set under ``dataset`` (a trained model records it, see
#: :func:`attn_pipeline.models.checkpoint.check_trained_on`).
TensorSplit = dict[str, torch.Tensor | str]


class RawDataError(ValueError):
    """Raw arrays that do not fit together."""


def _to_split(images: np.ndarray, labels: np.ndarray, what: str) -> TensorSplit:
    if images.ndim != 3:
        raise RawDataError(
            f"raw_{what}_images: expected shape (n, height, width), got {images.shape}; "
            "check that the catalog entry points at an images file."
        )
    if labels.ndim != 1:
        raise RawDataError(
            f"raw_{what}_labels: expected shape (n,), got {labels.shape}; "
            "check that the catalog entry points at a labels file."
        )
    if len(images) != len(labels):
        raise RawDataError(
            f"raw_{what}_images has {len(images)} images but raw_{what}_labels has "
            f"{len(labels)} labels: the two files come from different releases or one is "
            "damaged. Fetch them again with `attn-fetch-data <dataset> --force`."
        )
    scaled = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)
    return {"images": scaled, "labels": torch.from_numpy(labels.astype(np.int64))}


def place_on_canvas(images: torch.Tensor, canvas_size: int, seed: int) -> torch.Tensor:
    """``images (N, C, h, w) -> (N, C, S, S)``: each image at a seeded, uniformly random
    position of an ``S = canvas_size`` square canvas (translated MNIST)."""
    n, channels, height, width = images.shape
    if canvas_size < max(height, width):
        raise ConfigError(
            f"data_prep.canvas_size ({canvas_size}) is smaller than the images "
            f"({height}x{width}): raise it, or set it to null to keep the images as they are"
        )
    noise = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, canvas_size - height + 1, (n,), generator=noise)
    lefts = torch.randint(0, canvas_size - width + 1, (n,), generator=noise)
    rows = (tops[:, None] + torch.arange(height))[:, None, :, None]  # (N, 1, h, 1)
    cols = (lefts[:, None] + torch.arange(width))[:, None, None, :]  # (N, 1, 1, w)
    canvas = images.new_zeros(n, channels, canvas_size, canvas_size)
    index = torch.arange(n)[:, None, None, None]
    channel = torch.arange(channels)[None, :, None, None]
    canvas[index, channel, rows, cols] = images
    return canvas


def _placed(split: TensorSplit, config: DataPrepConfig, what: str) -> TensorSplit:
    """``split`` with its images on the canvas (``data_prep.canvas_size``), if one is set;
    each file has its own positions, seeded by ``data_prep.seed`` and the file's name."""
    if config.canvas_size is None:
        return split
    seed = zlib.crc32(f"canvas/{what}/{config.seed}".encode())
    return {**split, "images": place_on_canvas(split["images"], config.canvas_size, seed)}


def _take(split: TensorSplit, index: torch.Tensor) -> TensorSplit:
    return {key: value[index].clone() for key, value in split.items()}


def _flagged(split: TensorSplit, config: DataPrepConfig, dataset: str) -> TensorSplit:
    return {**split, BINARIZED: torch.tensor(config.binarize), DATASET: dataset}


def split_training_file(
    images: np.ndarray, labels: np.ndarray, config: DataPrepConfig, dataset: str
) -> tuple[TensorSplit, TensorSplit]:
    """Scale the training file to [0, 1] and split it, seeded, into train and validation.

    With ``subset_size`` set, a seeded random subset of that many images is split instead,
    holding out the same share for validation (:meth:`DataPrepConfig.split_sizes`).
    """
    full = _placed(_to_split(images, labels, "train"), config, "train")
    n = len(full["labels"])
    n_train, n_val = config.split_sizes(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    val_index, train_index = order[:n_val], order[n_val : n_val + n_train]
    logger.info("split %d images: %d train, %d validation", n_train + n_val, n_train, n_val)
    return (
        _flagged(_take(full, train_index), config, dataset),
        _flagged(_take(full, val_index), config, dataset),
    )


def prepare_test_set(
    images: np.ndarray, labels: np.ndarray, config: DataPrepConfig, dataset: str
) -> TensorSplit:
    """Scale the test file to [0, 1]; with ``test_subset_size``, keep a seeded random subset."""
    full = _placed(_to_split(images, labels, "test"), config, "test")
    n = len(full["labels"])
    if config.test_subset_size is None or config.test_subset_size >= n:
        return _flagged(full, config, dataset)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 1))
    return _flagged(_take(full, index[: config.test_subset_size]), config, dataset)
