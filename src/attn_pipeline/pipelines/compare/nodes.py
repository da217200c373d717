"""The study: every listed variant over several seeds, summarised against the baseline."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy import stats

from attn_pipeline.config import ModelConfig, TrainConfig
from attn_pipeline.datasets import CheckpointFolders
from attn_pipeline.pipelines.train.nodes import train_model


@dataclass(frozen=True)
class StudyMetric:
    """A test metric the study compares, and how its table prints it."""

    name: str  #: ``test/<name>`` in test_metrics.json and MLflow
    label: str  #: the column's heading
    higher_is_better: bool = False
    scale: float = 1.0  #: printed as value x scale
    decimals: int = 2


#: The study's tables (title, metrics): the one list of what the study compares.
TABLES: tuple[tuple[str, tuple[StudyMetric, ...]], ...] = (
    (
        "Likelihood and reconstruction (nats per image; MSE per pixel)",
        (
            StudyMetric("neg_elbo", "test -ELBO"),
            StudyMetric("nll_iw", "NLL (IW)"),
            StudyMetric("recon_bce", "recon BCE"),
            StudyMetric("kl", "KL"),
            StudyMetric("mse", "MSE x1e3", scale=1e3, decimals=3),
        ),
    ),
    (
        "Samples, on the feature extractor's features",
        (
            StudyMetric("fid_proxy", "FID-proxy"),
            StudyMetric("fid_proxy_recon", "FID-proxy recon"),
            # raw MMD² of ReLU features: tens, not 1e-3
            StudyMetric("kid_proxy", "KID-proxy"),
            StudyMetric("precision", "precision", higher_is_better=True, decimals=3),
            StudyMetric("recall", "recall", higher_is_better=True, decimals=3),
            StudyMetric("class_coverage", "class coverage", higher_is_better=True, decimals=3),
        ),
    ),
    (
        # only variants with an editable map have these (NaN otherwise)
        "Steering by attention (variants with an editable map; 1,000 prior samples, each "
        "half of the image emphasised x8 / suppressed x0.05)",
        (
            StudyMetric(
                "steer_emphasis_ink_share",
                "ink share, emphasised (points)",
                higher_is_better=True,
                scale=100,
                decimals=1,
            ),
            # where the suppressed half's ink share should fall: lower is better
            StudyMetric(
                "steer_suppression_ink_share",
                "ink share, suppressed (points)",
                scale=100,
                decimals=1,
            ),
            StudyMetric(
                "steer_suppression_locality", "locality, suppressed (in/out)", higher_is_better=True
            ),
            StudyMetric(
                "steer_confidence_ratio", "confidence kept", higher_is_better=True, decimals=3
            ),
            StudyMetric("steer_class_kept", "class kept", higher_is_better=True, decimals=3),
        ),
    ),
)
#: Every metric of the tables, by name.
METRICS: dict[str, StudyMetric] = {m.name: m for _, metrics in TABLES for m in metrics}


def study_train_model(entry: str, seed: int) -> Callable[..., Any]:
    """``train_model`` with ``train.seed`` replaced by ``seed`` (one study repeat); its
    run parameters name the study entry it trains."""

    def train_model_with_seed(
        train_set: dict[str, torch.Tensor],
        val_set: dict[str, torch.Tensor],
        model_config: ModelConfig,
        train_config: TrainConfig,
        checkpoint_folders: CheckpointFolders,
    ) -> tuple:
        *outputs, run_params = train_model(
            train_set,
            val_set,
            model_config,
            train_config.model_copy(update={"seed": seed}),
            checkpoint_folders,
        )
        return (*outputs, {"entry": entry, **run_params})

    return train_model_with_seed


def summarise_cell(entry: str) -> Callable[..., dict[str, Any]]:
    """:func:`summarise_run` for the cells of study entry ``entry``."""

    def summarise_run_of_entry(
        test_metrics: dict[str, float],
        evaluation_info: dict[str, Any],
        run_params: dict[str, Any],
        training_history: pd.DataFrame,
    ) -> dict[str, Any]:
        return summarise_run(entry, test_metrics, evaluation_info, run_params, training_history)

    return summarise_run_of_entry


def summarise_run(
    entry: str,
    test_metrics: dict[str, float],
    evaluation_info: dict[str, Any],
    run_params: dict[str, Any],
    training_history: pd.DataFrame,
) -> dict[str, Any]:
    """One row of the study: the study entry (its name in ``study.variants``, which keys
    the row), its architecture (``model.variant``), seed, size, speed, test metrics, and
    the feature extractor and sample counts its FID-proxy figures were measured with."""
    return {
        "entry": entry,
        "architecture": run_params["model"]["variant"],
        "seed": run_params["train"]["seed"],
        "n_parameters": run_params["n_parameters"],
        "epoch_seconds": float(training_history["train/epoch_seconds"].median()),
        "feature_extractor_hash": evaluation_info["feature_extractor_hash"],
        "fid_n_samples": evaluation_info["fid_n_samples"],
        "nll_iw_k": evaluation_info["nll_iw_k"],
        "nll_iw_n_images": evaluation_info["nll_iw_n_images"],
        **{name: float(test_metrics.get(f"test/{name}", math.nan)) for name in METRICS},
    }


def _check_comparable(runs: pd.DataFrame) -> None:
    """Refuse figures measured differently: another extractor, N or K is another scale."""
    for column, what in (
        ("feature_extractor_hash", "feature extractors"),
        ("fid_n_samples", "FID-proxy sample counts N"),
        ("nll_iw_k", "importance sample counts K"),
        ("nll_iw_n_images", "NLL test image counts"),
    ):
        values = sorted(set(runs[column]))
        if len(values) > 1:
            raise ValueError(
                f"the study's runs were measured with different {what} ({values}): their "
                "figures cannot share a table. Run the study again in one `kedro run` so "
                "that every variant is evaluated the same way."
            )


def _confidence_interval(differences: np.ndarray, level: float = 0.95) -> float:
    """Half-width of the t interval of the mean of ``differences`` (nan for one value)."""
    if len(differences) < 2:
        return math.nan
    t = stats.t.ppf(0.5 + level / 2, df=len(differences) - 1)
    return float(t * differences.std(ddof=1) / math.sqrt(len(differences)))


def compare_variants(
    baseline: str, **rows: dict[str, Any]
) -> tuple[pd.DataFrame, str, Figure, pd.DataFrame]:
    """The comparison table (CSV and Markdown), a forest plot of the paired differences,
    and the per-seed rows it was computed from.

    One row per study entry (by name: two entries of one architecture stay two rows): mean
    and standard deviation over seeds of each test metric, the parameter count, the median
    training time per epoch, and the difference from the entry ``baseline`` with a 95% t
    confidence interval. Differences are paired by seed (the same seed means the same data
    order and validation noise), so the interval is the one of the mean paired difference.
    """
    runs = pd.DataFrame(list(rows.values()))
    _check_comparable(runs)
    entries = list(dict.fromkeys(runs["entry"]))
    if baseline not in entries:
        raise ValueError(
            f"the study's baseline '{baseline}' (study.baseline) is not among its entries "
            f"{entries}: add it to study.variants or name another baseline"
        )
    base = runs[runs["entry"] == baseline].set_index("seed")
    records = []
    for entry in entries:
        own = runs[runs["entry"] == entry].set_index("seed")
        record: dict[str, Any] = {
            "entry": entry,
            "architecture": own["architecture"].iloc[0],
            "baseline": baseline,
            "seeds": len(own),
            "n_parameters": int(own["n_parameters"].iloc[0]),
            "epoch_seconds": float(own["epoch_seconds"].median()),
            "feature_extractor_hash": own["feature_extractor_hash"].iloc[0],
            "fid_n_samples": int(own["fid_n_samples"].iloc[0]),
            "nll_iw_k": int(own["nll_iw_k"].iloc[0]),
            "nll_iw_n_images": int(own["nll_iw_n_images"].iloc[0]),
        }
        for metric in METRICS:
            record[f"{metric}_mean"] = float(own[metric].mean())
            record[f"{metric}_std"] = float(own[metric].std(ddof=1)) if len(own) > 1 else math.nan
            paired = (own[metric] - base[metric]).dropna().to_numpy()
            record[f"{metric}_diff"] = float(paired.mean()) if len(paired) else math.nan
            record[f"{metric}_diff_ci95"] = _confidence_interval(paired)
        records.append(record)
    table = pd.DataFrame(records)
    return table, to_markdown(table), forest_plot(table), runs


def _verdict(metric: str, diff: float, half_width: float) -> str:
    if math.isnan(half_width) or abs(diff) <= half_width:
        return "no clear difference"
    better = diff > 0 if METRICS[metric].higher_is_better else diff < 0
    return "better" if better else "worse"


def _cell(r: Any, spec: StudyMetric) -> str:
    metric, scale, decimals = spec.name, spec.scale, spec.decimals
    mean, std = scale * getattr(r, f"{metric}_mean"), scale * getattr(r, f"{metric}_std")
    text = f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    if r.entry == r.baseline or math.isnan(getattr(r, f"{metric}_diff")):
        return text
    diff = scale * getattr(r, f"{metric}_diff")
    half = scale * getattr(r, f"{metric}_diff_ci95")
    return f"{text}; {diff:+.{decimals}f} [±{half:.{decimals}f}] {_verdict(metric, diff, half)}"


def _entry_label(r: Any) -> str:
    """The entry's name, and its architecture where the name does not say it."""
    return r.entry if r.entry == r.architecture else f"{r.entry} ({r.architecture})"


def to_markdown(table: pd.DataFrame) -> str:
    """The tables for people: each metric's mean ± std over seeds and, for every entry
    but the baseline, its paired difference from the baseline with the 95% half-width."""
    first = table.iloc[0]
    lines = [
        f"FID-proxy figures: feature extractor `{first['feature_extractor_hash']}`, "
        f"N = {first['fid_n_samples']:,} samples; NLL (IW): K = {first['nll_iw_k']} on "
        f"{first['nll_iw_n_images']:,} test images.",
        "",
    ]
    for title, columns in TABLES:
        lines += [
            f"**{title}**",
            "",
            "| entry | seeds | parameters | s/epoch | "
            + " | ".join(spec.label for spec in columns)
            + " |",
            "|---|---:|---:|---:|" + "---|" * len(columns),
        ]
        for r in table.itertuples():
            if all(math.isnan(getattr(r, f"{spec.name}_mean")) for spec in columns):
                continue  # a variant without these metrics (no map to steer)
            cells = [_cell(r, spec) for spec in columns]
            lines.append(
                f"| {_entry_label(r)} | {r.seeds} | {r.n_parameters:,} | {r.epoch_seconds:.1f} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    lines.append(
        f"Each cell: mean ± standard deviation over seeds; then the difference from "
        f"`{first['baseline']}`, "
        "paired by seed, with the half-width of a 95% t interval, and the verdict it allows. "
        "Lower is better but for "
        + ", ".join(spec.label for spec in METRICS.values() if spec.higher_is_better)
        + "."
    )
    return "\n".join(lines) + "\n"


#: The metrics the forest plot shows: the study's headline figures.
HEADLINE_METRICS = ("nll_iw", "fid_proxy")


def forest_plot(table: pd.DataFrame) -> Figure:
    """Each entry's paired difference from the baseline, with its 95% interval, per
    headline metric: a zero line to read them against, and axes that start nowhere but
    where the differences are (a bar chart of the means made small differences look large).
    """
    others = table[table["entry"] != table["baseline"]]
    figure = Figure(figsize=(9, 0.6 + 0.45 * max(len(others), 1) + 1.0), layout="constrained")
    y = np.arange(len(others))[::-1]
    for ax, metric in zip(figure.subplots(1, len(HEADLINE_METRICS)), HEADLINE_METRICS, strict=True):
        spec = METRICS[metric]
        diff = others[f"{metric}_diff"].to_numpy()
        half = others[f"{metric}_diff_ci95"].fillna(0).to_numpy()
        ax.errorbar(diff, y, xerr=half, fmt="o", color="#3b6ea8", capsize=4)
        ax.axvline(0.0, color="#888888", linewidth=1)
        ax.set_yticks(y, [_entry_label(r) for r in others.itertuples()])
        better = "higher" if spec.higher_is_better else "lower"
        ax.set_xlabel(
            f"{spec.label}: difference from {table['baseline'].iloc[0]} ({better} is better)"
        )
        reach = float(np.nanmax(np.abs(np.concatenate([diff - half, diff + half, [0.0]]))))
        ax.set_xlim(-1.1 * reach - 1e-9, 1.1 * reach + 1e-9)
    figure.suptitle("Paired differences by seed, with 95% t intervals")
    return figure
