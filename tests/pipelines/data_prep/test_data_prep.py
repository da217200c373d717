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


def _ink_box(image: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = torch.nonzero(image.any(1)).flatten(), torch.nonzero(image.any(0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def test_scenes_hold_each_digit_of_their_split_once_whole_and_apart(raw) -> None:
    """Multi-MNIST: 1-3 digits per 64x64 canvas, each digit of a split in one scene, drawn
    unchanged in the window its record names, no two digits' ink boxes meeting; the
    validation scenes are made of the validation digits alone."""
    images, labels = raw
    config = DataPrepConfig(val_size=20, canvas_size=64, objects_per_image=(1, 3))
    train, val = split_training_file(images, labels, config, "multi")
    digits = torch.from_numpy(images.astype(np.float32) / 255)
    plain_train, plain_val = split_training_file(images, labels, DataPrepConfig(val_size=20), "m")
    for scenes, plain in ((train, plain_train), (val, plain_val)):
        assert scenes["images"].shape[1:] == (1, 64, 64)
        objects = scenes["objects"]
        assert objects.shape[1:] == (3, 3)
        counts = (objects[:, :, 0] >= 0).sum(1)
        assert torch.equal(scenes["labels"], counts) and set(counts.tolist()) <= {1, 2, 3}
        # every digit of the split once (scenes of at least one digit leave none out)
        classes = objects[:, :, 0][objects[:, :, 0] >= 0]
        assert sorted(classes.tolist()) == sorted(plain["labels"].tolist())
        for scene, record in zip(scenes["images"][:, 0], objects, strict=True):
            boxes = []
            for label, top, left in record[record[:, 0] >= 0].tolist():
                window = scene[top : top + 28, left : left + 28]
                source = [d for d, y in zip(digits, labels, strict=True) if y == label]
                assert any(torch.equal(window * (d > 0), d) for d in source)
                boxes.append(_ink_box(window > 0))
                boxes[-1] = (boxes[-1][0] + top, boxes[-1][1] + top,
                             boxes[-1][2] + left, boxes[-1][3] + left)  # fmt: skip
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    assert a[1] <= b[0] or b[1] <= a[0] or a[3] <= b[2] or b[3] <= a[2]
    again, _ = split_training_file(images, labels, config, "multi")
    assert torch.equal(again["images"], train["images"])
    test = prepare_test_set(images, labels, config, "multi")
    assert test["objects"].shape[1:] == (3, 3) and test["images"].shape[1:] == (1, 64, 64)


def test_scenes_need_a_canvas_with_room_for_their_digits(raw) -> None:
    images, labels = raw
    with pytest.raises(ValueError, match="set canvas_size too"):
        DataPrepConfig(objects_per_image=(1, 3))
    with pytest.raises(ValueError, match=r"\[fewest, most\]"):
        DataPrepConfig(canvas_size=64, objects_per_image=(3, 1))
    crowded = DataPrepConfig(val_size=10, canvas_size=30, objects_per_image=(3, 3))
    with pytest.raises(ConfigError, match="no room for 3 digits"):
        split_training_file(images, labels, crowded, "multi")
