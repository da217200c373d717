"""The study's statistics: differences paired by seed, their t intervals, Holm's
adjustment within each (baseline, metric) family, and which comparison a pair is."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from attn_pipeline.spec.metric_table import HEADLINE_METRICS, METRICS


def paired_test(differences: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Half-width of the t interval of the mean of ``differences`` and the two-sided p-value
    of a paired t test that it is 0 (both nan for fewer than two values)."""
    n = len(differences)
    if n < 2:
        return math.nan, math.nan
    from scipy import stats  # noqa: PLC0415 (scipy.stats costs every kedro command 1.5 s)

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


def verdict(metric: str, diff: float, half_width: float, p_holm: float = math.nan) -> str:
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
        verdict(r.metric, r.diff, r.ci95, r.p_holm) for r in differences.itertuples()
    ]
    return differences
