"""Custom Kedro datasets: what kedro-datasets does not ship."""

from .idx_dataset import IDXDataset, IDXFormatError, encode_idx, parse_idx, read_idx_file
from .saved_state import (
    CheckpointFolders,
    ResultCache,
    ResultCacheDataset,
    TrainingCheckpoints,
    TrainingCheckpointsDataset,
    configuration_key,
)
from .study_cells import REUSED_CELL_TAG_PREFIX, MlflowStudyCellsDataset
from .torch_dataset import PackagedTorchDataset, TorchDataset

__all__ = [
    "CheckpointFolders",
    "IDXDataset",
    "IDXFormatError",
    "MlflowStudyCellsDataset",
    "PackagedTorchDataset",
    "REUSED_CELL_TAG_PREFIX",
    "ResultCache",
    "ResultCacheDataset",
    "TorchDataset",
    "TrainingCheckpoints",
    "TrainingCheckpointsDataset",
    "configuration_key",
    "encode_idx",
    "parse_idx",
    "read_idx_file",
]
