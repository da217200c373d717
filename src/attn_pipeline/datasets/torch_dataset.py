"""Kedro dataset for tensors and checkpoints saved with ``torch.save``."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from kedro.io import AbstractDataset, DatasetError


def write_atomically(path: Path, save: Callable[[Path], object]) -> None:
    """``save(tmp)`` then rename: ``path`` is either absent, the old file or the new one,
    whenever the process is killed; a leftover ``<name>.partial`` is never read."""
    tmp = path.with_name(path.name + ".partial")
    save(tmp)
    tmp.replace(path)


class TorchDataset(AbstractDataset[Any, Any]):
    """Tensors, dicts, lists and plain values in one ``torch.save`` file.

    Loads with ``weights_only=True``: a file can hold tensors and containers of them but
    no pickled code, so loading a checkpoint cannot execute anything. Saves go to a
    temporary file that replaces the old one only when complete.

    Example catalog entry::

        "{variant}.checkpoint":
          type: attn_pipeline.datasets.TorchDataset
          filepath: data/06_models/{variant}/model.pt
    """

    def __init__(
        self, *, filepath: str, missing_ok: bool = False, metadata: dict[str, Any] | None = None
    ) -> None:
        """``missing_ok``: a missing file loads as ``None`` (for "use it if it exists")."""
        self._filepath = PurePosixPath(filepath)
        self._missing_ok = missing_ok
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
          type: attn_pipeline.datasets.PackagedTorchDataset
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
