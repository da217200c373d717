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
#: side ``data_prep.canvas_size`` when one is set), int64 labels (N,) (scenes: the digit
#: count, with each digit's class and window under ``objects``, see :func:`compose_scenes`),
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


#: Attempts at a free position for one digit before a scene starts over.
_PLACEMENT_TRIES = 200


def _ink_boxes(images: np.ndarray) -> np.ndarray:
    """``images (N, h, w) -> (N, 4)``: each image's ink box ``top, left, bottom, right``
    (bottom and right exclusive); the whole image where it has no ink."""
    rows, cols = images.any(2), images.any(1)
    n, height, width = images.shape
    boxes = np.empty((n, 4), dtype=np.int64)
    boxes[:, 0] = np.where(rows.any(1), rows.argmax(1), 0)
    boxes[:, 1] = np.where(cols.any(1), cols.argmax(1), 0)
    boxes[:, 2] = np.where(rows.any(1), height - rows[:, ::-1].argmax(1), height)
    boxes[:, 3] = np.where(cols.any(1), width - cols[:, ::-1].argmax(1), width)
    return boxes


def _free_positions(
    boxes: np.ndarray, span: int, noise: np.random.Generator
) -> list[tuple[int, int]] | None:
    """Whole-pixel top-left corners in ``[0, span)`` for digits whose ink boxes (``(k, 4)``
    top, left, bottom, right in their own windows) then meet no other's; None when
    :data:`_PLACEMENT_TRIES` fresh starts all find a digit with no room."""
    for _ in range(_PLACEMENT_TRIES):
        taken: list[np.ndarray] = []
        corners: list[tuple[int, int]] = []
        for box in boxes:
            for _ in range(_PLACEMENT_TRIES):
                top, left = (int(v) for v in noise.integers(0, span, 2))
                here = box + np.array([top, left, top, left])
                if all(
                    here[0] >= other[2] or other[0] >= here[2]
                    or here[1] >= other[3] or other[1] >= here[3]
                    for other in taken
                ):  # fmt: skip
                    taken.append(here)
                    corners.append((top, left))
                    break
            else:
                break  # no room for this digit: start the scene over
        if len(corners) == len(boxes):
            return corners
    return None


def compose_scenes(
    images: torch.Tensor,
    labels: torch.Tensor,
    canvas_size: int,
    objects_per_image: tuple[int, int],
    seed: int,
) -> TensorSplit:
    """Multi-MNIST: the digits ``images (N, 1, h, w)`` in seeded groups of
    ``objects_per_image`` = (fewest, most), each group one scene on an ``S = canvas_size``
    canvas, each digit at a uniformly random whole-pixel position where its ink box meets no
    other digit's (a digit is used once; the last scene takes what is left, or, fewer than
    ``fewest``, leaves it out).

    Returns ``images (M, 1, S, S)`` (the digits' maximum where their windows overlap),
    ``labels (M,)`` the number of digits (what the feature extractor learns to tell apart),
    ``objects (M, most, 3)`` each digit's class and its ``h x w`` window's top and left
    (``-1`` rows after the last digit): what the scene metrics compare with, not model input.
    """
    fewest, most = objects_per_image
    n, channels, height, width = images.shape
    if canvas_size < max(height, width):
        raise ConfigError(
            f"data_prep.canvas_size ({canvas_size}) is smaller than the images "
            f"({height}x{width}): raise it (multi-MNIST: 64)"
        )
    noise = np.random.default_rng(seed)
    order = noise.permutation(n)
    grey = images[:, 0].numpy()
    ink = _ink_boxes(grey > 0)
    groups = []
    start = 0
    while start < n:
        count = min(int(noise.integers(fewest, most + 1)), n - start)
        if count < fewest:
            break
        groups.append(order[start : start + count])
        start += count
    scenes = np.zeros((len(groups), canvas_size, canvas_size), dtype=np.float32)
    objects = np.full((len(groups), most, 3), -1, dtype=np.int64)
    span = canvas_size - max(height, width) + 1
    for scene, digits in enumerate(groups):
        placed = _free_positions(ink[digits], span, noise)
        if placed is None:
            raise ConfigError(
                f"data_prep.canvas_size ({canvas_size}) has no room for {len(digits)} digits "
                "whose ink does not meet: raise canvas_size (multi-MNIST: 64) or lower "
                "data_prep.objects_per_image"
            )
        for slot, (digit, (top, left)) in enumerate(zip(digits, placed, strict=True)):
            window = scenes[scene, top : top + height, left : left + width]
            np.maximum(window, grey[digit], out=window)
            objects[scene, slot] = (int(labels[digit]), top, left)
    return {
        "images": torch.from_numpy(scenes).unsqueeze(1).expand(-1, channels, -1, -1).clone(),
        "labels": torch.from_numpy((objects[:, :, 0] >= 0).sum(1)),
        "objects": torch.from_numpy(objects),
    }


def _scenes(split: TensorSplit, config: DataPrepConfig, what: str) -> TensorSplit:
    """``split``'s digits composed into scenes (``data_prep.objects_per_image``), seeded by
    ``data_prep.seed`` and the split's name."""
    assert config.canvas_size is not None and config.objects_per_image is not None
    seed = zlib.crc32(f"scenes/{what}/{config.seed}".encode())
    return compose_scenes(
        split["images"], split["labels"], config.canvas_size, config.objects_per_image, seed
    )


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
    scenes = config.objects_per_image is not None
    # scenes are composed after the split: a digit stays in its split
    full = _to_split(images, labels, "train")
    if not scenes:
        full = _placed(full, config, "train")
    n = len(full["labels"])
    n_train, n_val = config.split_sizes(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    val_index, train_index = order[:n_val], order[n_val : n_val + n_train]
    train, val = _take(full, train_index), _take(full, val_index)
    if scenes:
        train, val = _scenes(train, config, "train"), _scenes(val, config, "val")
        logger.info(
            "split %d digits: %d train scenes, %d validation scenes",
            n_train + n_val,
            len(train["labels"]),
            len(val["labels"]),
        )
    else:
        logger.info("split %d images: %d train, %d validation", n_train + n_val, n_train, n_val)
    return _flagged(train, config, dataset), _flagged(val, config, dataset)


def prepare_test_set(
    images: np.ndarray, labels: np.ndarray, config: DataPrepConfig, dataset: str
) -> TensorSplit:
    """Scale the test file to [0, 1]; with ``test_subset_size``, keep a seeded random subset."""
    scenes = config.objects_per_image is not None
    full = _to_split(images, labels, "test")
    if not scenes:
        full = _placed(full, config, "test")
    n = len(full["labels"])
    if config.test_subset_size is not None and config.test_subset_size < n:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 1))
        full = _take(full, index[: config.test_subset_size])
    if scenes:  # a subset counts digits, like data_prep.subset_size
        full = _scenes(full, config, "test")
    return _flagged(full, config, dataset)
