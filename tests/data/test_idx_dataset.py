"""IDXDataset: good files load; each kind of bad file fails naming the file and problem."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from kedro.io import DatasetError

from attn_pipeline.data.idx import IDXDataset, IDXFormatError, encode_idx
from tests.conftest import write_idx


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)


@pytest.mark.parametrize("compress", [True, False])
def test_loads_gzip_and_plain_files(tmp_path: Path, images: np.ndarray, compress: bool) -> None:
    path = write_idx(tmp_path / "x.idx", images, compress=compress)
    loaded = IDXDataset(filepath=str(path), item_shape=[4, 3]).load()
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, images)


def test_item_count_reads_the_header_only(tmp_path: Path, images: np.ndarray) -> None:
    path = write_idx(tmp_path / "x.gz", images)
    assert IDXDataset(filepath=str(path)).item_count() == 5
    assert IDXDataset(filepath=str(path)).declared_item_shape() == (4, 3)


def test_save_then_load_round_trips(tmp_path: Path, images: np.ndarray) -> None:
    dataset = IDXDataset(filepath=str(tmp_path / "out" / "x.gz"))
    dataset.save(images)
    np.testing.assert_array_equal(dataset.load(), images)
    assert dataset.exists()


def _expect_error(path: Path, *fragments: str, **kwargs) -> None:
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(DatasetError) as info:
        IDXDataset(filepath=str(path), **kwargs).load()
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    # a failed load writes nothing
    assert sorted(p.name for p in path.parent.iterdir()) == before


def test_bad_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x12\x34\x08\x01" + struct.pack(">I", 0)))
    _expect_error(path, "bad IDX magic number")


def test_unsupported_type(tmp_path: Path) -> None:
    path = tmp_path / "float.idx"
    path.write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4)
    _expect_error(path, "'float' is not supported")


def test_truncated_data(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "short.idx"
    path.write_bytes(encode_idx(images)[:-7])
    _expect_error(path, "truncated", "(5, 4, 3)")


def test_trailing_bytes(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "long.idx"
    path.write_bytes(encode_idx(images) + b"\x00\x00")
    _expect_error(path, "trailing bytes")


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "header.idx"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 5))
    _expect_error(path, "truncated header")


def test_corrupt_gzip_stream(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "corrupt.gz"
    payload = gzip.compress(encode_idx(images))
    path.write_bytes(payload[: len(payload) // 2])
    _expect_error(path, "gzip")


def test_wrong_item_shape(tmp_path: Path, images: np.ndarray) -> None:
    path = write_idx(tmp_path / "x.gz", images)
    _expect_error(path, "wrong shape (5, 4, 3)", "expected (n, 28, 28)", item_shape=[28, 28])


def test_labels_file_where_images_expected(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels.gz", np.zeros(10, dtype=np.uint8))
    _expect_error(path, "wrong shape (10,)", item_shape=[28, 28])


def test_missing_file_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="attn-fetch-data"):
        IDXDataset(filepath=str(tmp_path / "nope.gz")).load()


def test_failed_save_keeps_the_old_file(tmp_path: Path, images: np.ndarray) -> None:
    dataset = IDXDataset(filepath=str(tmp_path / "x.gz"))
    dataset.save(images)
    with pytest.raises(IDXFormatError):
        dataset.save(images.astype(np.float32))
    np.testing.assert_array_equal(dataset.load(), images)
