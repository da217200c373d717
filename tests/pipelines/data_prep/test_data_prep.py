"""data_prep nodes: scaling, seeded split, subsets, and mismatched raw files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attn_pipeline.pipelines.data_prep.nodes import (
    RawDataError,
    prepare_test_set,
    split_training_file,
)
from attn_pipeline.spec.config import ConfigError, DataPrepConfig
from tests.conftest import digit_like_images


@pytest.fixture
def raw() -> tuple[np.ndarray, np.ndarray]:
    return digit_like_images(100)


def test_split_scales_to_unit_range_and_keeps_every_image_once(raw) -> None:
    train, val = split_training_file(*raw, DataPrepConfig(val_size=20), "mnist")
    assert train["images"].shape == (80, 1, 28, 28) and val["images"].shape == (20, 1, 28, 28)
    assert train["images"].dtype == torch.float32 and train["labels"].dtype == torch.int64
    assert 0.0 <= float(train["images"].min()) and float(train["images"].max()) <= 1.0
    both = torch.cat([train["images"], val["images"]]).flatten(1)
    expected = torch.from_numpy(raw[0].astype(np.float32) / 255).flatten(1)
    # the same multiset of rows: compare sorted row sums as a cheap fingerprint
    assert torch.equal(both.sum(1).sort().values, expected.sum(1).sort().values)


def test_split_is_seeded(raw) -> None:
    a, _ = split_training_file(*raw, DataPrepConfig(val_size=20, seed=3), "mnist")
    b, _ = split_training_file(*raw, DataPrepConfig(val_size=20, seed=3), "mnist")
    c, _ = split_training_file(*raw, DataPrepConfig(val_size=20, seed=4), "mnist")
    assert torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["images"], c["images"])


def test_subset_sizes(raw) -> None:
    # val_size counts images of the whole file: a half-size subset holds out half as many
    train, val = split_training_file(*raw, DataPrepConfig(val_size=20, subset_size=50), "mnist")
    assert len(train["images"]) == 40 and len(val["images"]) == 10
    test = prepare_test_set(*raw, DataPrepConfig(test_subset_size=30), "mnist")
    assert len(test["images"]) == 30 and len(test["labels"]) == 30


def test_images_and_labels_of_different_lengths(raw) -> None:
    images, labels = raw
    with pytest.raises(RawDataError, match="100 images but raw_train_labels has 99 labels"):
        split_training_file(images, labels[:99], DataPrepConfig(val_size=10), "mnist")


def test_labels_passed_as_images(raw) -> None:
    _, labels = raw
    with pytest.raises(RawDataError, match="raw_test_images: expected shape"):
        prepare_test_set(labels, labels, DataPrepConfig(), "mnist")


def test_subset_larger_than_the_file(raw) -> None:
    with pytest.raises(ConfigError, match="subset_size is 500 but the training file has 100"):
        split_training_file(*raw, DataPrepConfig(val_size=10, subset_size=500), "mnist")


@pytest.mark.parametrize(
    ("subset_size", "expected"),
    [(None, (55000, 5000)), (2000, (1833, 167)), (5000, (4583, 417)), (6000, (5500, 500))],
)
def test_the_default_validation_size_fits_every_subset(subset_size, expected) -> None:
    """The parameters file's examples and the documented quick run are valid together with
    the default val_size: the subset holds out MNIST's share (5000 of 60,000)."""
    assert DataPrepConfig(subset_size=subset_size).split_sizes(60000) == expected


def test_a_validation_split_that_leaves_nothing_to_train_on_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"val_size \(100\) leaves no training images"):
        DataPrepConfig(val_size=100).split_sizes(100)


def test_a_canvas_places_every_image_whole_at_a_seeded_position(raw) -> None:
    """Translated MNIST: each image, unchanged, somewhere on the canvas; the same seed the
    same positions (a subset keeps its images' positions), the test file its own."""
    images, labels = raw
    config = DataPrepConfig(val_size=10, canvas_size=40)
    train, val = split_training_file(images, labels, config, "translated")
    plain, _ = split_training_file(images, labels, DataPrepConfig(val_size=10), "translated")
    assert train["images"].shape[1:] == (1, 40, 40)
    assert torch.allclose(train["images"].sum(dim=(1, 2, 3)), plain["images"].sum(dim=(1, 2, 3)))
    ink = train["images"][:, 0] > 0
    rows, cols = ink.any(2).float().argmax(1), ink.any(1).float().argmax(1)  # first inked
    assert len({(int(r), int(c)) for r, c in zip(rows, cols, strict=True)}) > len(rows) // 2
    again, _ = split_training_file(images, labels, config, "translated")
    assert torch.equal(again["images"], train["images"])
    test = prepare_test_set(images, labels, config, "translated")
    assert not torch.equal(test["images"][: len(train["images"])], train["images"])
    with pytest.raises(ConfigError, match="canvas_size \\(20\\) is smaller than the images"):
        split_training_file(images, labels, DataPrepConfig(val_size=10, canvas_size=20), "t")
