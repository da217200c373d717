"""The study's comparison as a reader sees it: the Markdown tables with their verdicts,
and the forest plot of the paired differences."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from attn_pipeline.spec.metric_table import HEADLINE_METRICS, METRICS, TABLES, StudyMetric


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
