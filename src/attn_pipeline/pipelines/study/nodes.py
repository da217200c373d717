"""The study: every listed variant over several seeds, summarised against the baseline."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from attn_pipeline.spec.cells import study_cells
from attn_pipeline.spec.metric_table import (
    MEASURED_WITH,
    METRICS,
)

from .report import forest_plot, to_markdown
from .statistics import paired_differences


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
    """One row of the study: the study entry (its name in ``study.entries``, which keys
    the row), its architecture (``model.variant``), seed, size, speed, test metrics, and
    the feature extractor and sample counts its FID-proxy figures were measured with."""
    return {
        "entry": entry,
        "architecture": run_params["model"]["variant"],
        "seed": run_params["train"]["seed"],
        "n_parameters": run_params["n_parameters"],
        "epoch_seconds": float(training_history["train/epoch_seconds"].median()),
        **{key: evaluation_info[key] for key in MEASURED_WITH},
        **{name: float(test_metrics.get(f"test/{name}", math.nan)) for name in METRICS},
    }


def _check_comparable(runs: pd.DataFrame) -> None:
    """Refuse figures measured differently: other data, another extractor, N or K is
    another scale. The message names the cells of each value."""
    for column, what in MEASURED_WITH.items():
        groups = runs.groupby(column, sort=True)
        if groups.ngroups > 1:
            cells = "; ".join(
                f"{value}: " + ", ".join(f"{r.entry}_seed{r.seed}" for r in own.itertuples())
                for value, own in groups
            )
            raise ValueError(
                f"the study's cells were measured with different {what} ({cells}): their "
                "figures cannot share a table. Run those cells again with the same data "
                "and settings (on every machine: the same raw files, code and parameters)."
            )


def compare_study_cells(
    study: dict[str, Any], cells: dict[str, dict[str, Any]]
) -> tuple[pd.DataFrame, pd.DataFrame, str, Figure, pd.DataFrame]:
    """:func:`compare_entries` of the study ``study`` (``params:study``) from its cells'
    rows as the tracking server holds them (``cells``: namespace -> row); every cell of
    the study must be there."""
    wanted = [namespace for _, _, namespace in study_cells(study["entries"], study["seeds"])]
    missing = [name for name in wanted if name not in cells]
    if missing:
        raise ValueError(
            f"the study's run has no finished cell {', '.join(missing)}: run `attn-study` "
            "again with the same entries and seeds to make them"
        )
    return compare_entries(list(study["baselines"]), **{name: cells[name] for name in wanted})


def compare_entries(
    baselines: list[str], **rows: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, str, Figure, pd.DataFrame]:
    """The comparison: a table of every entry's figures, the paired differences from the
    baselines, both in Markdown, a forest plot of the differences, and the per-seed rows.

    One row per study entry (by name: two entries of one architecture stay two rows): mean
    and standard deviation over seeds of each test metric, the parameter count and the
    median training time per epoch. Differences are paired by seed (the same seed means the
    same data order and validation noise): see :func:`paired_differences`. The first
    baseline is the one the per-metric tables print differences from.
    """
    runs = pd.DataFrame(list(rows.values()))
    _check_comparable(runs)
    entries = list(dict.fromkeys(runs["entry"]))
    missing = [baseline for baseline in baselines if baseline not in entries]
    if not baselines or missing:
        raise ValueError(
            f"the study's baselines {missing or baselines} (study.baselines) are not among "
            f"its entries {entries}: add them to study.entries or name others"
        )
    records = []
    for entry in entries:
        own = runs[runs["entry"] == entry]
        record: dict[str, Any] = {
            "entry": entry,
            "architecture": own["architecture"].iloc[0],
            "seeds": len(own),
            "n_parameters": int(own["n_parameters"].iloc[0]),
            "epoch_seconds": float(own["epoch_seconds"].median()),
            **{key: own[key].iloc[0] for key in MEASURED_WITH},  # one value each: checked above
        }
        for metric in METRICS:
            record[f"{metric}_mean"] = float(own[metric].mean())
            record[f"{metric}_std"] = float(own[metric].std(ddof=1)) if len(own) > 1 else math.nan
        records.append(record)
    table = pd.DataFrame(records)
    differences = paired_differences(runs, baselines)
    markdown = to_markdown(table, differences, baselines)
    return table, differences, markdown, forest_plot(differences, baselines), runs
