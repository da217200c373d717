"""The middle tier: the project's pipelines run by Kedro's ``SequentialRunner`` on an
in-memory catalog, with no session, hooks, files or MLflow: the nodes' wiring, the typed
parameters and what each stage hands the next, in seconds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from kedro.io import AbstractDataset, DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from attn_pipeline.data.saved_state import CheckpointFolders, ResultCache
from attn_pipeline.pipeline_registry import build_pipelines
from attn_pipeline.spec.config import TYPED_BLOCKS, ModelConfig
from attn_pipeline.spec.parameters import load_parameters
from tests.conftest import PROJECT_ROOT, TINY_RUN, digit_like_images

pytestmark = pytest.mark.pipeline

ENTRIES = ["none", "spatial_gate"]


class Absent(AbstractDataset):
    """Loads as nothing: a stored extractor that does not exist yet."""

    def load(self) -> None:
        return None

    def save(self, data: Any) -> None:
        raise NotImplementedError

    def _describe(self) -> dict[str, Any]:
        return {}


def _catalog(tmp_path: Path, params: dict[str, Any]) -> DataCatalog:
    train_images, train_labels = digit_like_images(240, seed=0)
    test_images, test_labels = digit_like_images(60, seed=1)
    datasets: dict[str, Any] = {
        "raw_train_images": MemoryDataset(train_images),
        "raw_train_labels": MemoryDataset(train_labels),
        "raw_test_images": MemoryDataset(test_images),
        "raw_test_labels": MemoryDataset(test_labels),
        "stored_feature_extractor": Absent(),
        "reference_feature_extractor": Absent(),
        "params:dataset": MemoryDataset("mnist"),
    }
    for block, config in TYPED_BLOCKS.items():  # typed, as a session hands them to nodes
        datasets[f"params:{block}"] = MemoryDataset(config.model_validate(params[block]))
    for entry in ENTRIES:
        model = ModelConfig.model_validate(params[entry]["model"])
        datasets[f"params:{entry}.model"] = MemoryDataset(model)
        checkpoints = CheckpointFolders(tmp_path / entry / "training")
        datasets[f"{entry}.training_checkpoints"] = MemoryDataset(checkpoints, copy_mode="assign")
        cache = ResultCache(tmp_path / entry / "evaluations")
        datasets[f"{entry}.evaluation_cache"] = MemoryDataset(cache, copy_mode="assign")
    return DataCatalog(datasets)


def _parameters() -> dict[str, Any]:
    params = load_parameters(PROJECT_ROOT / "conf", env="base")
    for block, values in TINY_RUN.items():
        params[block] = {**params.get(block, {}), **values}
    params["evaluate"]["steer_samples"] = 20
    return params


def test_the_default_pipeline_runs_on_an_in_memory_catalog(tmp_path: Path) -> None:
    params = _parameters()
    pipelines = build_pipelines({**params, "entries": ENTRIES})
    catalog = _catalog(tmp_path, params)
    SequentialRunner().run(pipelines["__default__"], catalog)

    table = catalog.load("test_metrics_table")
    assert isinstance(table, pd.DataFrame) and list(table["variant"]) == ENTRIES
    assert table["nll_iw"].map(math.isfinite).all()
    for entry in ENTRIES:
        history = catalog.load(f"{entry}.training_history")
        assert len(history) == TINY_RUN["train"]["epochs"]
        info = catalog.load(f"{entry}.evaluation_info")
        assert info["feature_extractor_hash"]
        sampler = catalog.load(f"{entry}.sampler")
        images = sampler(torch.zeros(2, sampler.latent_dim))
        assert tuple(images.shape) == (2, 1, 28, 28)
        assert torch.all((images >= 0) & (images <= 1))
    # the steering figure is drawn for the entry with a map only
    assert catalog.exists("spatial_gate.steering") and not catalog.exists("none.steering")
