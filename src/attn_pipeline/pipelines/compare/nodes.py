"""The study: every listed variant over several seeds, summarised against the baseline."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy import stats

from attn_pipeline.config import ModelConfig, TrainConfig
from attn_pipeline.pipelines.train.nodes import train_model

BASELINE = "none"
#: Test metrics the table compares; lower is better for each.
METRICS = ("neg_elbo", "recon_bce", "kl", "mse")


def seeded_train_model(seed: int) -> Callable[..., Any]:
    """``train_model`` with ``train.seed`` replaced by ``seed`` (one study repeat)."""

    def train_model_with_seed(
        train_set: dict[str, torch.Tensor],
        val_set: dict[str, torch.Tensor],
        model_config: ModelConfig,
        train_config: TrainConfig,
    ) -> tuple:
        return train_model(
            train_set, val_set, model_config, train_config.model_copy(update={"seed": seed})
        )

    return train_model_with_seed


def summarise_run(
    test_metrics: dict[str, float], run_params: dict[str, Any], training_history: pd.DataFrame
) -> dict[str, Any]:
    """One row of the study: the run's variant, seed, size, speed and test metrics."""
    return {
        "variant": run_params["model"]["variant"],
        "seed": run_params["train"]["seed"],
        "n_parameters": run_params["n_parameters"],
        "epoch_seconds": float(training_history["train/epoch_seconds"].median()),
        **{name: float(test_metrics[f"test/{name}"]) for name in METRICS},
    }


def _confidence_interval(differences: np.ndarray, level: float = 0.95) -> float:
    """Half-width of the t interval of the mean of ``differences`` (nan for one value)."""
    if len(differences) < 2:
        return math.nan
    t = stats.t.ppf(0.5 + level / 2, df=len(differences) - 1)
    return float(t * differences.std(ddof=1) / math.sqrt(len(differences)))


def compare_variants(**rows: dict[str, Any]) -> tuple[pd.DataFrame, str, Figure]:
    """The comparison table (CSV and Markdown) and a bar chart of the test loss.

    For each variant: mean and standard deviation over seeds of each test metric, the
    parameter count, the median training time per epoch, and the difference from the
    baseline ``none`` with a 95% t confidence interval. Differences are paired by seed
    (the same seed means the same data order and validation noise), so the interval is the
    one of the mean paired difference.
    """
    runs = pd.DataFrame(list(rows.values()))
    variants = list(dict.fromkeys(runs["variant"]))
    if BASELINE not in variants:
        raise ValueError(f"the study needs the baseline '{BASELINE}' among its variants")
    base = runs[runs["variant"] == BASELINE].set_index("seed")
    records = []
    for variant in variants:
        own = runs[runs["variant"] == variant].set_index("seed")
        record: dict[str, Any] = {
            "variant": variant,
            "seeds": len(own),
            "n_parameters": int(own["n_parameters"].iloc[0]),
            "epoch_seconds": float(own["epoch_seconds"].median()),
        }
        for metric in METRICS:
            record[f"{metric}_mean"] = float(own[metric].mean())
            record[f"{metric}_std"] = float(own[metric].std(ddof=1)) if len(own) > 1 else math.nan
            paired = (own[metric] - base[metric]).dropna().to_numpy()
            record[f"{metric}_diff"] = float(paired.mean()) if len(paired) else math.nan
            record[f"{metric}_diff_ci95"] = _confidence_interval(paired)
        records.append(record)
    table = pd.DataFrame(records)
    return table, to_markdown(table), bar_chart(table)


def _verdict(diff: float, half_width: float) -> str:
    if math.isnan(half_width) or abs(diff) <= half_width:
        return "no clear difference"
    return "better" if diff < 0 else "worse"


def to_markdown(table: pd.DataFrame) -> str:
    """The table for people: test loss and MSE with their differences from the baseline."""
    lines = [
        "| variant | seeds | parameters | s/epoch | test -ELBO (nats) | vs none [95% CI] "
        "| recon BCE | KL | MSE x1e3 | MSE vs none [95% CI] x1e3 |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in table.itertuples():
        if r.variant == BASELINE:
            elbo_diff = mse_diff = "baseline"
        else:
            elbo_diff = (
                f"{r.neg_elbo_diff:+.2f} [±{r.neg_elbo_diff_ci95:.2f}] "
                f"{_verdict(r.neg_elbo_diff, r.neg_elbo_diff_ci95)}"
            )
            mse_diff = (
                f"{1e3 * r.mse_diff:+.3f} [±{1e3 * r.mse_diff_ci95:.3f}] "
                f"{_verdict(r.mse_diff, r.mse_diff_ci95)}"
            )
        lines.append(
            f"| {r.variant} | {r.seeds} | {r.n_parameters:,} | {r.epoch_seconds:.1f} "
            f"| {r.neg_elbo_mean:.2f} ± {r.neg_elbo_std:.2f} | {elbo_diff} "
            f"| {r.recon_bce_mean:.2f} | {r.kl_mean:.2f} | {1e3 * r.mse_mean:.3f} | {mse_diff} |"
        )
    lines.append("")
    lines.append(
        "Mean ± standard deviation over seeds; differences are paired by seed, with "
        "the half-width of a 95% t interval. Lower is better everywhere."
    )
    return "\n".join(lines) + "\n"


def bar_chart(table: pd.DataFrame) -> Figure:
    """Test negative ELBO per variant (mean, with the standard deviation over seeds)."""
    figure = Figure(figsize=(6, 3.4), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(table))
    ax.bar(
        x,
        table["neg_elbo_mean"],
        yerr=table["neg_elbo_std"].fillna(0),
        capsize=4,
        color=["#888888" if v == BASELINE else "#3b6ea8" for v in table["variant"]],
    )
    ax.set_xticks(x, table["variant"])
    low = float((table["neg_elbo_mean"] - table["neg_elbo_std"].fillna(0)).min())
    high = float((table["neg_elbo_mean"] + table["neg_elbo_std"].fillna(0)).max())
    margin = max(0.5, 0.5 * (high - low))
    ax.set_ylim(low - margin, high + margin)
    ax.set_ylabel("test negative ELBO (nats / image)")
    ax.set_title("Variants at equal budget (lower is better)")
    return figure
