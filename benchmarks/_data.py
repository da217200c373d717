"""Shared by the benchmarks: MNIST splits prepared exactly as the data_prep pipeline does."""

from __future__ import annotations

from pathlib import Path

import torch

from attn_pipeline.data.idx import IDXDataset
from attn_pipeline.pipelines.data_prep.nodes import prepare_test_set, split_training_file
from attn_pipeline.spec.config import DataPrepConfig

RAW = Path("data/01_raw")


def load_splits(
    dataset: str = "mnist", config: DataPrepConfig | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(train, val, test) from ``data/01_raw/<dataset>`` (run `attn-fetch-data` first)."""
    config = config or DataPrepConfig()
    folder = RAW / dataset

    def raw(name: str):
        return IDXDataset(filepath=str(folder / name)).load()

    train, val = split_training_file(
        raw("train-images-idx3-ubyte.gz"), raw("train-labels-idx1-ubyte.gz"), config, dataset
    )
    test = prepare_test_set(
        raw("t10k-images-idx3-ubyte.gz"), raw("t10k-labels-idx1-ubyte.gz"), config, dataset
    )
    return train, val, test
