"""Kedro dataset for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order.
See http://yann.lecun.com/exdb/mnist/ (section "The IDX file format").
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from attn_pipeline.data.torch_files import write_atomically

_UBYTE = 0x08
# Type codes the IDX format defines; only unsigned bytes occur in (Fashion-)MNIST.
_TYPE_NAMES = {
    0x08: "ubyte",
    0x09: "byte",
    0x0B: "short",
    0x0C: "int",
    0x0D: "float",
    0x0E: "double",
}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(DatasetError):
    """The bytes of a file are not a valid IDX array."""


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a read-only uint8 array, checking the header against the data.

    Args:
        raw: The file's bytes, uncompressed.
        source: Name used in error messages (the file's path).

    Raises:
        IDXFormatError: Bad magic number, unsupported type, or a length that does not
            match the dimensions in the header.
    """
    if len(raw) < 4:
        raise IDXFormatError(f"{source}: {len(raw)} bytes is too short for an IDX header")
    zero1, zero2, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or type_code not in _TYPE_NAMES or ndim == 0:
        raise IDXFormatError(
            f"{source}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000080N): "
            "not an IDX file, or a corrupt one; fetch it again."
        )
    if type_code != _UBYTE:
        raise IDXFormatError(
            f"{source}: IDX type '{_TYPE_NAMES[type_code]}' is not supported, only 'ubyte' "
            "(the type of every MNIST and Fashion-MNIST file)."
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IDXFormatError(
            f"{source}: truncated header: {ndim} dimensions need {header_len} bytes, "
            f"the file has {len(raw)}."
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(raw) - header_len
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise IDXFormatError(
            f"{source}: file {problem}: the header says shape {tuple(shape)} "
            f"({expected} values) but {actual} bytes of data follow; fetch it again."
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)
    return array


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX bytes (the inverse of :func:`parse_idx`)."""
    if array.dtype != np.uint8:
        raise IDXFormatError(f"IDX encoding supports uint8 arrays only, got {array.dtype}")
    header = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def read_idx_file(path: Path) -> np.ndarray:
    """Read a plain or gzip-compressed IDX file; errors name the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetError(
            f"{path} does not exist. Fetch the raw data first: "
            "`attn-fetch-data mnist` (or `attn-fetch-data mnist --local-dir DIR` offline)."
        ) from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except _GZIP_ERRORS as exc:
            raise _corrupt_gzip(path, exc) from exc
    return parse_idx(raw, source=str(path))


#: What a damaged gzip stream raises: a bad header, a truncated file, a corrupt deflate block.
_GZIP_ERRORS = (EOFError, OSError, zlib.error)


def _corrupt_gzip(path: Path, exc: Exception) -> IDXFormatError:
    """The one message for an unreadable ``.gz``: the file, the cause and the fix."""
    dataset = path.parent.name
    return IDXFormatError(
        f"{path}: corrupt or truncated gzip stream ({exc}). Fix: `attn-fetch-data {dataset} "
        f"--force` replaces it (offline: `attn-fetch-data {dataset} --force --local-dir DIR`)."
    )


class IDXDataset(AbstractDataset[np.ndarray, np.ndarray]):
    """One IDX file (plain or ``.gz``) as a uint8 numpy array.

    Example catalog entry::

        raw_train_images:
          type: attn_pipeline.data.IDXDataset
          filepath: data/01_raw/mnist/train-images-idx3-ubyte.gz
          item_shape: [28, 28]

    ``item_shape`` (optional) is the shape every item must have: the array's shape
    must be ``(n, *item_shape)``. A load never writes anything; a save writes to a
    temporary file first, so a failed save leaves the old file in place.
    """

    def __init__(
        self,
        *,
        filepath: str,
        item_shape: Sequence[int] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = PurePosixPath(filepath)
        self._item_shape = tuple(item_shape) if item_shape is not None else None
        self.metadata = metadata

    def load(self) -> np.ndarray:
        path = Path(self._filepath)
        array = read_idx_file(path)
        if self._item_shape is not None and array.shape[1:] != self._item_shape:
            raise IDXFormatError(
                f"{path}: wrong shape {array.shape}: expected (n, "
                f"{', '.join(map(str, self._item_shape))}). Is it the right file "
                "(images vs labels, the right data set)?"
            )
        return array

    def save(self, data: np.ndarray) -> None:
        path = Path(self._filepath)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = encode_idx(data)
        if path.suffix == ".gz":
            payload = gzip.compress(payload, mtime=0)
        write_atomically(path, lambda tmp: tmp.write_bytes(payload))

    def _dimensions(self) -> tuple[int, ...]:
        """The sizes the header declares, read without loading the data."""
        path = Path(self._filepath)
        with open(path, "rb") as f:
            compressed = f.read(2) == _GZIP_MAGIC
        opener = gzip.open if compressed else open
        try:
            with opener(path, "rb") as f:
                magic = f.read(4)
                if len(magic) < 4 or magic[:2] != b"\x00\x00":
                    raise IDXFormatError(f"{path}: not an IDX file (bad header {magic.hex()})")
                sizes = f.read(4 * magic[3])
        except _GZIP_ERRORS as exc:
            raise _corrupt_gzip(path, exc) from exc
        if magic[3] == 0 or len(sizes) < 4 * magic[3]:
            raise IDXFormatError(f"{path}: not an IDX file (a header of {len(sizes)} bytes)")
        return struct.unpack(f">{magic[3]}I", sizes)

    def item_count(self) -> int:
        """The number of items the header declares, read without loading the data."""
        return self._dimensions()[0]

    def declared_item_shape(self) -> tuple[int, ...]:
        """The shape of one item (an image's ``(H, W)``) as the header declares it, read
        without loading the data."""
        return self._dimensions()[1:]

    def _exists(self) -> bool:
        return Path(self._filepath).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "item_shape": self._item_shape}
