"""Test-set metrics of each variant, and one table that puts them side by side."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from attn_pipeline.config import EvaluateConfig
from attn_pipeline.metrics import evaluate_reconstruction
from attn_pipeline.models import load_checkpoint
from attn_pipeline.training import resolve_device


def evaluate_model(
    checkpoint: dict[str, Any], test_set: dict[str, torch.Tensor], config: EvaluateConfig
) -> dict[str, float]:
    """``test/*`` metrics of one trained variant (see :class:`ReconstructionMetrics`)."""
    model, _ = load_checkpoint(checkpoint)
    model.to(resolve_device(config.device))
    metrics = evaluate_reconstruction(
        model, test_set["images"], batch_size=config.batch_size, seed=config.seed
    )
    return metrics.as_dict(prefix="test/")


def tabulate_test_metrics(**metrics_by_variant: dict[str, float]) -> pd.DataFrame:
    """One row per variant, one column per metric (without the ``test/`` prefix)."""
    rows = [
        {"variant": variant, **{k.removeprefix("test/"): v for k, v in metrics.items()}}
        for variant, metrics in metrics_by_variant.items()
    ]
    return pd.DataFrame(rows)
