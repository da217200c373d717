"""The study's comparison table: means, spreads and paired differences with their CI."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from attn_pipeline.pipelines.compare.nodes import compare_variants, summarise_run


def _row(variant: str, seed: int, neg_elbo: float, mse: float = 0.01) -> dict:
    return {
        "variant": variant,
        "seed": seed,
        "n_parameters": 100,
        "epoch_seconds": 2.0,
        "neg_elbo": neg_elbo,
        "recon_bce": neg_elbo - 20,
        "kl": 20.0,
        "mse": mse,
    }


def test_paired_differences_and_t_interval() -> None:
    rows = {
        "none_seed0": _row("none", 0, 100.0),
        "none_seed1": _row("none", 1, 102.0),
        "none_seed2": _row("none", 2, 101.0),
        "spatial_seed0": _row("spatial", 0, 99.0),
        "spatial_seed1": _row("spatial", 1, 100.8),
        "spatial_seed2": _row("spatial", 2, 100.2),
    }
    table, markdown, figure = compare_variants(**rows)
    spatial = table.set_index("variant").loc["spatial"]
    differences = [-1.0, -1.2, -0.8]
    assert spatial["neg_elbo_mean"] == pytest.approx(100.0)
    assert spatial["neg_elbo_std"] == pytest.approx(pd.Series([99.0, 100.8, 100.2]).std())
    assert spatial["neg_elbo_diff"] == pytest.approx(-1.0)
    half = stats.t.ppf(0.975, 2) * pd.Series(differences).std() / math.sqrt(3)
    assert spatial["neg_elbo_diff_ci95"] == pytest.approx(half)
    assert "| spatial | 3 |" in markdown and "-1.00 [±0.50] better" in markdown
    assert figure.axes


def test_overlapping_interval_is_called_no_clear_difference() -> None:
    rows = {
        "a": _row("none", 0, 100.0),
        "b": _row("none", 1, 102.0),
        "c": _row("self", 0, 101.0),
        "d": _row("self", 1, 100.0),
    }
    _, markdown, _ = compare_variants(**rows)
    assert "no clear difference" in markdown


def test_study_without_the_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="baseline 'none'"):
        compare_variants(a=_row("latent", 0, 100.0))


def test_summarise_run_reads_the_run_outputs() -> None:
    row = summarise_run(
        {"test/neg_elbo": 101.0, "test/recon_bce": 76.0, "test/kl": 25.0, "test/mse": 0.012},
        {"model": {"variant": "cbam"}, "train": {"seed": 2}, "n_parameters": 123},
        pd.DataFrame({"train/epoch_seconds": [10.0, 12.0, 11.0]}),
    )
    assert row == {
        "variant": "cbam",
        "seed": 2,
        "n_parameters": 123,
        "epoch_seconds": 11.0,
        "neg_elbo": 101.0,
        "recon_bce": 76.0,
        "kl": 25.0,
        "mse": 0.012,
    }
