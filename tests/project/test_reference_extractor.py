"""The reference feature extractors shipped with the project: every machine's FID-proxy
figures come from the same weights, whose hash and test accuracy the docs (Metrics) give."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from attn_pipeline.data.fetch import ENV_VAR
from attn_pipeline.data.idx import IDXDataset
from attn_pipeline.models.classifier import load_feature_extractor, state_dict_hash
from attn_pipeline.pipelines.data_prep.nodes import prepare_test_set
from attn_pipeline.pipelines.feature_extractor.nodes import classifier_accuracy
from attn_pipeline.spec.config import DataPrepConfig
from tests.conftest import PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "src" / "attn_pipeline" / "reference" / "feature_extractor"
#: The documented figures (docs/metrics.md): hash and accuracy on the full official test set.
DOCUMENTED = {
    "mnist": ("bf06febc6b1ef0dc", 0.9907),
    "fashion_mnist": ("6d7502e6a0251b56", 0.9100),
}


def _local_copy(dataset: str) -> Path | None:
    """The official IDX files of ``dataset``: CI names the MNIST folder in ATTN_PIPELINE_DATA_DIR,
    and Fashion-MNIST is the folder beside it (../shared/datasets/<dataset>)."""
    if not os.environ.get(ENV_VAR):
        return None
    folder = Path(os.environ[ENV_VAR]).parent / dataset
    return folder if (folder / "t10k-images-idx3-ubyte.gz").is_file() else None


@pytest.mark.parametrize("dataset", sorted(DOCUMENTED))
def test_the_shipped_extractor_has_the_documented_hash(dataset: str) -> None:
    checkpoint = torch.load(SHIPPED / f"{dataset}.pt", weights_only=True)
    documented_hash, documented_accuracy = DOCUMENTED[dataset]
    assert checkpoint["dataset"] == dataset
    assert state_dict_hash(checkpoint["state_dict"]) == checkpoint["hash"] == documented_hash
    assert checkpoint["test_accuracy"] == pytest.approx(documented_accuracy, abs=5e-5)
    described = json.loads((SHIPPED / f"{dataset}.json").read_text())
    assert described["hash"] == documented_hash and described["n_test_images"] == 10000


@pytest.mark.pipeline  # the real test sets
@pytest.mark.parametrize("dataset", sorted(DOCUMENTED))
def test_the_shipped_extractor_scores_the_documented_accuracy_on_the_real_test_set(
    dataset: str,
) -> None:
    folder = _local_copy(dataset)
    if folder is None:
        pytest.skip(f"no local copy of {dataset} ({ENV_VAR} and the folder beside it)")
    test_set = prepare_test_set(
        IDXDataset(filepath=str(folder / "t10k-images-idx3-ubyte.gz")).load(),
        IDXDataset(filepath=str(folder / "t10k-labels-idx1-ubyte.gz")).load(),
        DataPrepConfig(),
        dataset,
    )
    model = load_feature_extractor(torch.load(SHIPPED / f"{dataset}.pt", weights_only=True))
    # another CPU's kernels may flip an image on the decision boundary: 0.1% at most
    assert classifier_accuracy(model, test_set) == pytest.approx(DOCUMENTED[dataset][1], abs=1e-3)
