"""What is stored and how: fetching the raw IDX files, the project's Kedro datasets (IDX,
torch files, saved training states and evaluations), binarisation and the content hashes
that key saved results. Imports nothing else from the package."""

from __future__ import annotations

import importlib
from typing import Any

#: The project's Kedro datasets, as the catalog names them (``attn_pipeline.data.<name>``);
#: imported when first named, so that ``attn-fetch-data`` does not import torch.
DATASETS = {
    "IDXDataset": "idx",
    "TorchDataset": "torch_files",
    "PackagedTorchDataset": "torch_files",
    "TrainingCheckpointsDataset": "saved_state",
    "ResultCacheDataset": "saved_state",
}


def __getattr__(name: str) -> Any:
    if name not in DATASETS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{DATASETS[name]}"), name)
