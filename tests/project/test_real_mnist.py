"""Real MNIST, when a local copy is given (CI passes ../shared/datasets/mnist through
ATTN_PIPELINE_DATA_DIR): fetched through the project's local-folder option, it must verify
and load with the official shapes. Skipped where no copy is given."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from attn_pipeline.data.fetch import ENV_VAR, fetch
from attn_pipeline.data.idx import IDXDataset

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get(ENV_VAR), reason=f"{ENV_VAR} does not name a local MNIST copy"
    ),
    pytest.mark.pipeline,  # trains on real MNIST: make test-fast leaves it out
]


def test_local_mnist_verifies_and_loads_with_official_shapes(tmp_path: Path) -> None:
    dest = fetch("mnist", tmp_path)  # reads the folder from the environment variable
    expected = {
        "train-images-idx3-ubyte.gz": (60000, 28, 28),
        "train-labels-idx1-ubyte.gz": (60000,),
        "t10k-images-idx3-ubyte.gz": (10000, 28, 28),
        "t10k-labels-idx1-ubyte.gz": (10000,),
    }
    for name, shape in expected.items():
        array = IDXDataset(filepath=str(dest / name)).load()
        assert array.shape == shape and array.dtype == np.uint8
    labels = IDXDataset(filepath=str(dest / "t10k-labels-idx1-ubyte.gz")).load()
    assert sorted(np.unique(labels).tolist()) == list(range(10))
