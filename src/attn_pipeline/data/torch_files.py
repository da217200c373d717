"""Kedro dataset for tensors and checkpoints saved with ``torch.save``."""

from __future__ import annotations

import errno
import importlib.resources
import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from kedro.io import AbstractDataset, DatasetError


def _same(a: Any, b: Any) -> bool:
    """Whether two saved values are equal: tensors by dtype, shape and values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        both = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        return both and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


class WriteError(DatasetError):
    """A file could not be written (a full disk, a read-only folder); the previous version of
    the file, if any, is untouched and no partial file is left behind."""


def _cause(error: BaseException, folder: Path) -> str:
    """What went wrong, in words: torch reports a full disk as ``unexpected pos ...``."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "No space left on device"
    try:
        full = shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        full = False
    if full:  # torch's own words (a C++ file and line) say nothing more to the user
        return "No space left on device"
    return str(error) or type(error).__name__


#: Free bytes under which a failed write is put down to a full disk.
_NEARLY_FULL = 1 << 20


def write_atomically(path: Path, save: Callable[[Path], object]) -> None:
    """``save(tmp)`` then rename: ``path`` is either absent, the old file or the new one,
    whenever the process is killed; a leftover ``<name>.partial`` is never read. The file
    and its folder are synced before and after the rename, so the new version survives a
    power cut once this returns. A failed write (a full disk) removes the partial file,
    keeps the old one and raises :class:`WriteError` naming the file and the cause."""
    tmp = path.with_name(path.name + ".partial")
    try:
        save(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)
        raise WriteError(
            f"{_cause(error, path.parent)} while writing {path}: free some space (or fix the "
            "folder's permissions) and run again; the previous version, if any, is kept"
        ) from error
    tmp.replace(path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class TorchDataset(AbstractDataset[Any, Any]):
    """Tensors, dicts, lists and plain values in one ``torch.save`` file.

    Loads with ``weights_only=True``: a file can hold tensors and containers of them but
    no pickled code, so loading a checkpoint cannot execute anything. Saves go to a
    temporary file that replaces the old one only when complete.

    Example catalog entry::

        "{entry}.checkpoint":
          type: attn_pipeline.data.TorchDataset
          filepath: data/06_models/{entry}/model.pt
    """

    def __init__(
        self,
        *,
        filepath: str,
        missing_ok: bool = False,
        rewrite_unchanged: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """``missing_ok``: a missing file loads as ``None`` (for "use it if it exists").
        ``rewrite_unchanged: false``: a save of what the file holds already (equal values)
        leaves the file alone (its time stamp too; a read-only copy is not written at all)."""
        self._filepath = PurePosixPath(filepath)
        self._missing_ok = missing_ok
        self._rewrite_unchanged = rewrite_unchanged
        self.metadata = metadata

    @property
    def missing_ok(self) -> bool:
        """Whether a missing file is a valid state (it loads as ``None``)."""
        return self._missing_ok

    def _path(self) -> Path:
        return Path(self._filepath)

    def load(self) -> Any:
        path = self._path()
        if not path.is_file() and self._missing_ok:
            return None
        if not path.is_file():
            raise DatasetError(
                f"{path} does not exist: run the pipeline that writes it first "
                "(`kedro run` runs all of them)."
            )
        return torch.load(path, map_location="cpu", weights_only=True)

    def save(self, data: Any) -> None:
        path = Path(self._filepath)
        if not self._rewrite_unchanged and path.is_file() and _same(data, self.load()):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: torch.save(data, tmp))

    def _exists(self) -> bool:
        return self._path().is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "missing_ok": self._missing_ok}


class PackagedTorchDataset(TorchDataset):
    """A read-only ``torch.save`` file shipped inside an installed Python package, found
    wherever the package is installed (a checkout, a wheel), not in the working directory.

    Example catalog entry::

        reference_feature_extractor:
          type: attn_pipeline.data.PackagedTorchDataset
          package: attn_pipeline
          resource: reference/feature_extractor/mnist.pt
    """

    def __init__(
        self,
        *,
        package: str,
        resource: str,
        missing_ok: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        # not `filepath`: Kedro makes a relative filepath absolute under the project folder
        super().__init__(filepath=resource, missing_ok=missing_ok, metadata=metadata)
        self._package = package

    def _path(self) -> Path:
        return Path(str(importlib.resources.files(self._package).joinpath(str(self._filepath))))

    def save(self, data: Any) -> None:
        raise DatasetError(f"{self._filepath} ships with {self._package}: it is read-only")

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "package": self._package}
