"""Saved state that lets a rerun go on where the last run stopped: checkpoints written
while training runs, in one folder per training configuration, and evaluations kept by
the hash of what they evaluated.

Training cannot hand its epochs to Kedro one by one (a node returns once, at the end), and
a node cannot know a result exists before it knows what it would compute from, so these
datasets load as handles their node reads and writes through, the way
``PartitionedDataset`` hands out callables. Where the files live stays in the catalog.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from kedro.io import AbstractDataset, DatasetError

from attn_pipeline.data.fingerprints import result_key
from attn_pipeline.data.torch_files import write_atomically

logger = logging.getLogger(__name__)


class TrainingCheckpoints:
    """One training configuration's folder.

    ``epoch_NNN.pt``: the model after epoch NNN (what ``load_checkpoint`` reads);
    ``resume.pt``: the full state after the latest complete epoch (weights, optimizer,
    random number generators, metrics so far); ``configuration.json``: what the folder's
    name is the hash of. Each file is written under ``.partial`` and renamed when
    complete, ``resume.pt`` last, so a kill at any moment leaves the last complete
    epoch to resume from.
    """

    def __init__(self, folder: Path, description: dict[str, Any]) -> None:
        self.folder = folder
        self.description = description

    @property
    def resume_file(self) -> Path:
        return self.folder / "resume.pt"

    def latest(self) -> dict[str, Any] | None:
        """The state after the last complete epoch, or ``None`` when there is none.

        An unreadable state (a disk fault: writes are atomic) is reported and ignored:
        training then starts from the first epoch and overwrites it.
        """
        if not self.resume_file.is_file():
            return None
        try:
            return torch.load(self.resume_file, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 (any unreadable file means the same)
            logger.warning(
                "%s cannot be read (%s): training starts again from epoch 1",
                self.resume_file,
                error,
            )
            return None

    def save(self, epoch: int, model_checkpoint: dict[str, Any], state: dict[str, Any]) -> None:
        """Write epoch ``epoch``'s model, then make ``state`` the one to resume from."""
        self.folder.mkdir(parents=True, exist_ok=True)
        description_file = self.folder / "configuration.json"
        if not description_file.is_file():
            write_atomically(
                description_file,
                lambda tmp: tmp.write_text(json.dumps(self.description, indent=2) + "\n"),
            )
        write_atomically(
            self.folder / f"epoch_{epoch:03d}.pt", lambda tmp: torch.save(model_checkpoint, tmp)
        )
        write_atomically(self.resume_file, lambda tmp: torch.save(state, tmp))

    def clear(self) -> None:
        """Forget every saved epoch of this configuration (``train.resume: false``)."""
        if self.folder.exists():
            shutil.rmtree(self.folder)


class CheckpointFolders:
    """The folders of every training configuration of one model entry."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def for_configuration(self, description: dict[str, Any]) -> TrainingCheckpoints:
        """The folder of the configuration ``description`` (plain JSON values) names."""
        return TrainingCheckpoints(self.root / result_key(description), description)


class _HandleDataset(AbstractDataset[None, Any]):
    """A dataset that loads as a handle on the folder ``path`` and is written through it,
    never saved as a whole. Always exists: an empty folder means nothing saved yet."""

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = PurePosixPath(path)
        self.metadata = metadata

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._path} is written through the handle its load() returns")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path}


class TrainingCheckpointsDataset(_HandleDataset):
    """Loads as a :class:`CheckpointFolders` handle on ``path``, which training writes each
    epoch through.

    Example catalog entry::

        "{entry}.training_checkpoints":
          type: attn_pipeline.data.TrainingCheckpointsDataset
          path: data/06_models/{entry}/training
    """

    def load(self) -> CheckpointFolders:
        return CheckpointFolders(Path(self._path))


class ResultCache:
    """Results (plain JSON values) kept by the hash of what they were computed from."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, description: dict[str, Any]) -> Path:
        return self.folder / f"{result_key(description)}.json"

    def get(self, description: dict[str, Any]) -> dict[str, Any] | None:
        """The result stored for ``description``, or ``None``."""
        path = self._path(description)
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            logger.warning("%s cannot be read (%s): computing it again", path, error)
            return None
        return stored["result"] if stored.get("description") == description else None

    def put(self, description: dict[str, Any], result: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"description": description, "result": result}, indent=2) + "\n"
        write_atomically(self._path(description), lambda tmp: tmp.write_text(text))


class ResultCacheDataset(_HandleDataset):
    """Loads as a :class:`ResultCache` on ``path``.

    Example catalog entry::

        "{entry}.evaluation_cache":
          type: attn_pipeline.data.ResultCacheDataset
          path: data/07_model_output/{entry}/evaluations
    """

    def load(self) -> ResultCache:
        return ResultCache(Path(self._path))
