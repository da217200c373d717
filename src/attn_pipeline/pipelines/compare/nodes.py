"""The study: every listed variant over several seeds, summarised against the baseline."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from attn_pipeline.metrics.table import (
    HEADLINE_METRICS,
    MEASURED_WITH,
    METRICS,
    TABLES,
    StudyMetric,
)
from attn_pipeline.study import study_cells


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
    """:func:`compare_variants` of the study ``study`` (``params:study``) from its cells'
    rows as the tracking server holds them (``cells``: namespace -> row); every cell of
    the study must be there."""
    wanted = [namespace for _, _, namespace in study_cells(study["variants"], study["seeds"])]
    missing = [name for name in wanted if name not in cells]
    if missing:
        raise ValueError(
            f"the study's run has no finished cell {', '.join(missing)}: run `attn-study` "
            "again with the same entries and seeds to make them"
        )
    return compare_variants(list(study["baselines"]), **{name: cells[name] for name in wanted})


def paired_test(differences: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Half-width of the t interval of the mean of ``differences`` and the two-sided p-value
    of a paired t test that it is 0 (both nan for fewer than two values)."""
    n = len(differences)
    if n < 2:
        return math.nan, math.nan
    sem = differences.std(ddof=1) / math.sqrt(n)
    half_width = float(stats.t.ppf(0.5 + level / 2, df=n - 1) * sem)
    mean = float(differences.mean())
    if sem == 0:
        return half_width, 1.0 if mean == 0 else 0.0
    return half_width, float(2 * stats.t.sf(abs(mean) / sem, df=n - 1))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: reject where below the family's level, and the
    chance of any false rejection in the family stays under that level."""
    m = len(p_values)
    order = np.argsort(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


#: How close two parameter counts must be for a comparison to count as "equal size".
EQUAL_SIZE_TOLERANCE = 0.02


def comparison_kind(n_parameters: int, baseline_parameters: int) -> str:
    """What a difference compares: every study entry trains with the same budget; the
    sizes are equal when the parameter counts are within :data:`EQUAL_SIZE_TOLERANCE`."""
    ratio = n_parameters / baseline_parameters - 1
    if abs(ratio) <= EQUAL_SIZE_TOLERANCE:
        return "equal budget and size"
    return f"equal budget, {ratio:+.0%} parameters"


def comparison_pairs(entries: list[str], baselines: list[str]) -> list[tuple[str, str]]:
    """(entry, baseline) pairs: each baseline against every entry that is not itself one of
    the baselines up to it, so that two baselines are compared once."""
    return [
        (entry, baseline)
        for i, baseline in enumerate(baselines)
        for entry in entries
        if entry not in baselines[: i + 1]
    ]


def paired_differences(runs: pd.DataFrame, baselines: list[str]) -> pd.DataFrame:
    """Every entry's paired difference from every baseline, one row per (entry, baseline,
    metric): mean difference, 95% t half-width and p-value and, for the headline metrics,
    the Holm-adjusted p-value over the entries compared with that baseline, and a verdict
    (Holm-adjusted for the headline metrics, the plain interval for the others)."""
    sizes = runs.groupby("entry")["n_parameters"].first()
    by_entry = {entry: own.set_index("seed") for entry, own in runs.groupby("entry", sort=False)}
    records = []
    for entry, baseline in comparison_pairs(list(by_entry), baselines):
        own, base = by_entry[entry], by_entry[baseline]
        for metric in METRICS:
            paired = (own[metric] - base[metric]).dropna().to_numpy()
            if not len(paired):
                continue  # a metric neither has (steering of a variant without a map)
            half_width, p_value = paired_test(paired)
            records.append(
                {
                    "entry": entry,
                    "baseline": baseline,
                    "comparison": comparison_kind(sizes[entry], sizes[baseline]),
                    "metric": metric,
                    "seeds": len(paired),
                    "diff": float(paired.mean()),
                    "ci95": half_width,
                    "p": p_value,
                }
            )
    differences = pd.DataFrame(
        records,
        columns=["entry", "baseline", "comparison", "metric", "seeds", "diff", "ci95", "p"],
    )
    differences["p_holm"] = math.nan
    for (_, metric), family in differences.groupby(["baseline", "metric"]):
        tested = family[family["p"].notna()]  # a comparison of one seed has no test
        if metric in HEADLINE_METRICS and len(tested):
            differences.loc[tested.index, "p_holm"] = holm(tested["p"].to_numpy())
    differences["verdict"] = [
        _verdict(r.metric, r.diff, r.ci95, r.p_holm) for r in differences.itertuples()
    ]
    return differences


def compare_variants(
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
            f"its entries {entries}: add them to study.variants or name others"
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


def _verdict(metric: str, diff: float, half_width: float, p_holm: float = math.nan) -> str:
    """better / worse / no clear difference: by the Holm-adjusted p-value where there is
    one (headline metrics), else by whether the 95% interval leaves out 0."""
    if math.isnan(half_width):
        return "too few seeds"
    if math.isnan(p_holm):
        unclear = abs(diff) <= half_width
    else:
        unclear = p_holm >= 0.05
    if unclear:
        return "no clear difference"
    better = diff > 0 if METRICS[metric].higher_is_better else diff < 0
    return "better" if better else "worse"


def _difference_text(spec: StudyMetric, diff: float, half: float) -> str:
    scale, decimals = spec.scale, spec.decimals
    return f"{scale * diff:+.{decimals}f} [±{scale * half:.{decimals}f}]"


def _cell(r: Any, spec: StudyMetric, difference: pd.Series | None) -> str:
    scale, decimals = spec.scale, spec.decimals
    mean, std = scale * getattr(r, f"{spec.name}_mean"), scale * getattr(r, f"{spec.name}_std")
    text = f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    if difference is None:
        return text
    diff_text = _difference_text(spec, difference["diff"], difference["ci95"])
    return f"{text}; {diff_text} {difference['verdict']}"


def _entry_label(entry: str, architecture: str) -> str:
    """The entry's name, and its architecture where the name does not say it."""
    return entry if entry == architecture else f"{entry} ({architecture})"


def to_markdown(table: pd.DataFrame, differences: pd.DataFrame, baselines: list[str]) -> str:
    """The tables for people: first the verdicts on the headline metrics against every
    baseline (Holm-adjusted), then each metric's mean ± std over seeds with the paired
    difference from the first baseline."""
    first = table.iloc[0]
    architectures = dict(zip(table["entry"], table["architecture"], strict=True))
    headline = [METRICS[name] for name in HEADLINE_METRICS]
    tested = differences[(differences["metric"] == HEADLINE_METRICS[0]) & differences["p"].notna()]
    family_sizes = ", ".join(f"{len(f)} against `{b}`" for b, f in tested.groupby("baseline"))
    lines = [
        f"FID-proxy figures: feature extractor `{first['feature_extractor_hash']}`, "
        f"N = {first['fid_n_samples']:,} samples; NLL (IW): K = {first['nll_iw_k']} on "
        f"{first['nll_iw_n_images']:,} test images.",
        "",
        "**Verdicts on the headline metrics** (paired by seed; every entry trains with the "
        "same budget)",
        "",
        "| entry | compared with | comparison | "
        + " | ".join(f"{spec.label}: difference [95% CI], Holm p" for spec in headline)
        + " |",
        "|---|---|---|" + "---|" * len(headline),
    ]
    keyed = differences.set_index(["entry", "baseline", "metric"])
    for (entry, baseline), pair in differences.groupby(["entry", "baseline"], sort=False):
        cells = []
        for spec in headline:
            d = keyed.loc[(entry, baseline, spec.name)]
            p_text = "no test" if math.isnan(d["p_holm"]) else f"p = {d['p_holm']:.3f}"
            cells.append(
                f"{_difference_text(spec, d['diff'], d['ci95'])}, {p_text}: **{d['verdict']}**"
            )
        lines.append(
            f"| {_entry_label(entry, architectures[entry])} | {baseline} | "
            f"{pair['comparison'].iloc[0]} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"Per headline metric the table makes {family_sizes} tested comparisons. A 95% interval "
        "that leaves out 0 would be a 5% false-positive chance for each of them, so among "
        "that many some would be expected by chance alone: the verdicts use Holm's "
        "adjustment over the entries compared with one baseline on one metric, which keeps "
        "the chance of any false verdict in that family under 5%. The intervals are the "
        "plain (unadjusted) 95% ones.",
        "",
    ]
    from_first = differences[differences["baseline"] == baselines[0]].set_index(["entry", "metric"])
    for title, columns in TABLES:
        rows = []
        for r in table.itertuples():
            if all(math.isnan(getattr(r, f"{spec.name}_mean")) for spec in columns):
                continue  # a variant without these metrics (no map to steer)
            cells = [
                _cell(
                    r,
                    spec,
                    from_first.loc[(r.entry, spec.name)]
                    if (r.entry, spec.name) in from_first.index
                    else None,
                )
                for spec in columns
            ]
            rows.append(
                f"| {_entry_label(r.entry, r.architecture)} | {r.seeds} | {r.n_parameters:,} | "
                f"{r.epoch_seconds:.1f} | " + " | ".join(cells) + " |"
            )
        if not rows:
            continue  # no entry has these metrics (a study without a steerable variant)
        lines += [
            f"**{title}**",
            "",
            "| entry | seeds | parameters | s/epoch | "
            + " | ".join(spec.label for spec in columns)
            + " |",
            "|---|---:|---:|---:|" + "---|" * len(columns),
            *rows,
            "",
        ]
    lines.append(
        f"Each cell: mean ± standard deviation over seeds; then the difference from "
        f"`{baselines[0]}`, paired by seed, with the half-width of a 95% t interval, and the "
        "verdict (Holm-adjusted for "
        + ", ".join(spec.label for spec in headline)
        + "). Lower is better but for "
        + ", ".join(spec.label for spec in METRICS.values() if spec.higher_is_better)
        + "."
    )
    return "\n".join(lines) + "\n"


def forest_plot(differences: pd.DataFrame, baselines: list[str]) -> Figure:
    """Each entry's paired difference from each baseline, with its 95% interval, per
    headline metric: a zero line to read them against, and axes that start nowhere but
    where the differences are (a bar chart of the means made small differences look large).
    """
    headline = differences[differences["metric"].isin(HEADLINE_METRICS)]
    pairs = list(dict.fromkeys(zip(headline["entry"], headline["baseline"], strict=True)))
    figure = Figure(figsize=(10, 0.6 + 0.4 * max(len(pairs), 1) + 1.2), layout="constrained")
    axes = figure.subplots(1, len(HEADLINE_METRICS), sharey=True)
    y = {pair: len(pairs) - 1 - i for i, pair in enumerate(pairs)}
    colours = dict(zip(baselines, ("#3b6ea8", "#c4622d", "#5b8c3a", "#8a5aa8"), strict=False))
    for ax, metric in zip(axes, HEADLINE_METRICS, strict=True):
        spec = METRICS[metric]
        rows = headline[headline["metric"] == metric]
        for baseline, own in rows.groupby("baseline", sort=False):
            ax.errorbar(
                own["diff"],
                [y[(e, baseline)] for e in own["entry"]],
                xerr=own["ci95"].fillna(0),
                fmt="o",
                color=colours.get(baseline, "#444444"),
                capsize=4,
                label=f"vs {baseline}",
            )
        ax.axvline(0.0, color="#888888", linewidth=1)
        ax.set_yticks(list(y.values()), [f"{e} vs {b}" for e, b in y])
        better = "higher" if spec.higher_is_better else "lower"
        ax.set_xlabel(f"{spec.label}: difference ({better} is better)")
        ends = np.concatenate(
            [rows["diff"] - rows["ci95"].fillna(0), rows["diff"] + rows["ci95"].fillna(0), [0.0]]
        )
        reach = float(np.nanmax(np.abs(ends)))
        ax.set_xlim(-1.1 * reach - 1e-9, 1.1 * reach + 1e-9)
    axes[0].legend(loc="best", fontsize="small")
    figure.suptitle("Paired differences by seed, with 95% t intervals")
    return figure
