"""The study's comparison table: means, spreads and paired differences with their CI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from attn_pipeline.pipelines.study.nodes import (
    compare_entries,
    compare_study_cells,
    summarise_run,
)
from attn_pipeline.pipelines.study.statistics import holm
from attn_pipeline.spec.config import StudyConfig
from attn_pipeline.spec.metric_table import METRICS


def _row(
    entry: str,
    seed: int,
    neg_elbo: float,
    mse: float = 0.01,
    extractor: str = "abc",
    architecture: str | None = None,
    data: str = "d1",
) -> dict:
    return {
        "entry": entry,
        "architecture": architecture or entry,
        "seed": seed,
        "n_parameters": 100,
        "epoch_seconds": 2.0,
        "data_hash": data,
        "feature_extractor_hash": extractor,
        "fid_n_samples": 1000,
        "nll_iw_k": 100,
        "nll_iw_n_images": 500,
        **{metric: 0.5 for metric in METRICS},
        "neg_elbo": neg_elbo,
        "nll_iw": neg_elbo - 3,
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
    table, differences, markdown, figure, runs = compare_entries(baselines=["none"], **rows)
    spatial = table.set_index("entry").loc["spatial"]
    paired = pd.Series([-1.0, -1.2, -0.8])
    assert spatial["neg_elbo_mean"] == pytest.approx(100.0)
    assert spatial["neg_elbo_std"] == pytest.approx(pd.Series([99.0, 100.8, 100.2]).std())
    elbo = differences.set_index(["entry", "metric"]).loc[("spatial", "neg_elbo")]
    assert elbo["baseline"] == "none" and elbo["diff"] == pytest.approx(-1.0)
    half = stats.t.ppf(0.975, 2) * paired.std() / math.sqrt(3)
    assert elbo["ci95"] == pytest.approx(half)
    assert elbo["p"] == pytest.approx(stats.ttest_rel([99.0, 100.8, 100.2], [100, 102, 101]).pvalue)
    assert "| spatial | 3 |" in markdown and "-1.00 [±0.50] better" in markdown
    # one comparison per headline metric: Holm's adjustment leaves its p-value as it is
    nll = differences.set_index(["entry", "metric"]).loc[("spatial", "nll_iw")]
    assert nll["p_holm"] == pytest.approx(nll["p"]) and nll["verdict"] == "better"
    assert "| spatial | none | equal budget and size | -1.00 [±0.50], p = 0.0" in markdown
    assert "feature extractor `abc`, N = 1,000 samples; NLL (IW): K = 100" in markdown
    # a forest plot per headline metric: the paired difference, its interval, a zero line
    assert len(figure.axes) == 2
    nll_axis = figure.axes[0]
    assert "NLL (IW): difference" in nll_axis.get_xlabel()
    points = nll_axis.lines[0].get_xdata()
    assert list(points) == pytest.approx([nll["diff"]])
    low, high = nll_axis.get_xlim()
    assert low < 0 < high  # the zero line is in view
    assert len(runs) == 6 and set(runs["entry"]) == {"none", "spatial"}  # per-seed rows


def test_higher_is_better_metrics_get_the_right_verdict() -> None:
    rows = {f"none{s}": _row("none", s, 100.0) for s in range(3)}
    for s, recall in enumerate((0.60, 0.61, 0.62)):
        rows[f"cbam{s}"] = {**_row("cbam", s, 100.0), "recall": recall}
    _, _, markdown, _, _ = compare_entries(baselines=["none"], **rows)
    assert "+0.110 [±0.025] better" in markdown


def test_figures_from_different_extractors_are_refused() -> None:
    rows = {
        "a": _row("none", 0, 100.0, extractor="abc"),
        "b": _row("spatial", 0, 99.0, extractor="def"),
    }
    with pytest.raises(
        ValueError, match=r"different feature extractors \(abc: none_seed0; def: spatial_seed0\)"
    ):
        compare_entries(baselines=["none"], **rows)


def test_cells_of_other_data_are_refused_by_name() -> None:
    """Cells made on machines whose data differ (another raw file, another split) are not
    paired: the message names which cells have which data."""
    cells = {
        "study.none_seed0": _row("none", 0, 100.0),
        "study.spatial_seed0": _row("spatial", 0, 99.0),
        "study.none_seed1": _row("none", 1, 100.0, data="d2"),
        "study.spatial_seed1": _row("spatial", 1, 99.0),
    }
    study = {"entries": ["none", "spatial"], "seeds": [0, 1], "baselines": ["none"]}
    with pytest.raises(
        ValueError,
        match=r"different data .*d1: none_seed0, spatial_seed0, "
        r"spatial_seed1; d2: none_seed1",
    ):
        compare_study_cells(study, cells)


def test_the_comparison_of_tracked_cells_needs_every_cell() -> None:
    cells = {
        "study.none_seed0": _row("none", 0, 100.0),
        "study.spatial_seed0": _row("spatial", 0, 9),
    }
    study = {"entries": ["none", "spatial"], "seeds": [0, 1], "baselines": ["none"]}
    with pytest.raises(ValueError, match="no finished cell study.none_seed1, study.spatial_seed1"):
        compare_study_cells(study, cells)
    table, *_ = compare_study_cells({**study, "seeds": [0]}, cells)
    assert list(table["entry"]) == ["none", "spatial"]


def test_overlapping_interval_is_called_no_clear_difference() -> None:
    rows = {
        "a": _row("none", 0, 100.0),
        "b": _row("none", 1, 102.0),
        "c": _row("self", 0, 101.0),
        "d": _row("self", 1, 100.0),
    }
    _, _, markdown, _, _ = compare_entries(baselines=["none"], **rows)
    assert "no clear difference" in markdown


def test_a_comparison_of_one_seed_has_no_verdict_and_leaves_the_family() -> None:
    """An entry with one seed (a study cut short) gets no interval and no verdict, and Holm's
    adjustment is over the comparisons that have a test."""
    rows = {f"none{s}": _row("none", s, 100.0 + 0.1 * s) for s in range(3)}
    rows |= {f"a{s}": _row("a", s, 99.0 + 0.2 * s * s) for s in range(3)}
    rows["b0"] = _row("b", 0, 98.0)
    _, differences, markdown, _, _ = compare_entries(baselines=["none"], **rows)
    nll = differences[differences["metric"] == "nll_iw"].set_index("entry")
    assert nll.loc["b", "verdict"] == "too few seeds" and math.isnan(nll.loc["b", "p_holm"])
    assert nll.loc["a", "p_holm"] == pytest.approx(nll.loc["a", "p"])  # a family of one
    assert "too few seeds" in markdown


def test_study_without_the_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match=r"baselines \['none'\] .* not among its entries"):
        compare_entries(baselines=["none"], a=_row("latent", 0, 100.0))
    with pytest.raises(ValueError, match=r"study.baselines \['wide'\] must be distinct names of"):
        StudyConfig(entries=["none", "latent"], seeds=[0], baselines=["wide"])


def test_rows_are_keyed_by_entry_not_architecture() -> None:
    """Two entries of one architecture (a baseline and a widened baseline) stay two rows,
    each with its own seeds, and the baseline is whichever entry is named."""
    rows = {}
    for s in range(2):
        rows[f"none_seed{s}"] = _row("none", s, 100.0 + s)
        rows[f"none_wide_seed{s}"] = _row("none_wide", s, 99.0 + s, architecture="none")
    table, differences, markdown, _, _ = compare_entries(baselines=["none_wide"], **rows)
    assert list(table["entry"]) == ["none", "none_wide"]
    assert list(table["seeds"]) == [2, 2]
    elbo = differences.set_index(["entry", "metric"]).loc[("none", "neg_elbo")]
    assert elbo["diff"] == pytest.approx(1.0)
    assert "| none_wide (none) | 2 |" in markdown
    assert "difference from `none_wide`" in markdown


def test_a_section_no_entry_has_is_left_out_of_the_tables() -> None:
    """A study without a steerable variant: no steering table (not a header without rows);
    with one, the table lists only the entries that have the figures."""
    plain = {f"{e}_seed{s}": _row(e, s, 100.0 + s) for e in ("none", "cbam") for s in range(2)}
    for row in plain.values():
        row.update({metric: math.nan for metric in METRICS if metric.startswith("steer_")})
    _, _, markdown, _, _ = compare_entries(baselines=["none"], **plain)
    assert "**Steering by attention" not in markdown
    assert "**Samples, on the feature extractor's features**" in markdown
    steerable = {f"spatial_gate_seed{s}": _row("spatial_gate", s, 100.0 + s) for s in range(2)}
    _, _, markdown, _, _ = compare_entries(baselines=["none"], **plain, **steerable)
    steering = markdown.split("**Steering by attention")[1].split("\n\n")[1]
    assert [line.split(" | ")[0] for line in steering.splitlines()[2:]] == ["| spatial_gate"]


def test_holm_adjustment() -> None:
    # the textbook example: m = 4, sorted p 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06, 0.06
    adjusted = holm(np.array([0.03, 0.01, 0.04, 0.02]))
    assert list(adjusted) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert list(holm(np.array([0.5, 0.001]))) == pytest.approx([0.5, 0.002])


def test_two_baselines_each_family_adjusted_and_compared_once() -> None:
    """With an equal-budget and an equal-size baseline, every other entry is compared with
    both, the two baselines once; Holm adjusts each (baseline, headline metric) family over
    the entries in it, and the verdicts follow the adjusted p-values."""
    rows = {}
    offsets = {"none": 0.0, "wide": -0.5, "a": -1.0, "b": -0.1}
    noise = [0.0, 0.3, -0.2, 0.1, -0.1]
    for entry, offset in offsets.items():
        for s, e in enumerate(noise):
            jitter = 0.05 * s if entry == "a" else (0.4 * e if entry == "b" else 0.0)
            rows[f"{entry}{s}"] = {
                **_row(entry, s, 100.0 + e + offset + jitter),
                "n_parameters": 130 if entry in ("wide", "a") else 100,
            }
    _, differences, markdown, figure, _ = compare_entries(baselines=["none", "wide"], **rows)
    headline = differences[differences["metric"] == "nll_iw"]
    pairs = list(zip(headline["entry"], headline["baseline"], strict=True))
    assert pairs == [
        ("wide", "none"),
        ("a", "none"),
        ("b", "none"),
        ("a", "wide"),
        ("b", "wide"),
    ]
    for _, family in headline.groupby("baseline"):
        assert list(family["p_holm"]) == pytest.approx(list(holm(family["p"].to_numpy())))
    assert (headline["p_holm"] >= headline["p"]).all()
    kinds = dict(zip(pairs, headline["comparison"], strict=True))
    assert kinds[("a", "wide")] == "equal budget and size"
    assert kinds[("a", "none")] == "equal budget, +30% parameters"
    verdicts = dict(zip(pairs, headline["verdict"], strict=True))
    assert verdicts[("a", "none")] == "better" and verdicts[("b", "wide")] != "better"
    # non-headline metrics get no Holm p-value; their verdict is the plain interval's
    assert differences[differences["metric"] == "mse"]["p_holm"].isna().all()
    assert "3 against `none`, 2 against `wide`" in markdown
    assert "| a | wide | equal budget and size |" in markdown
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()][0] == "wide vs none"


def test_summarise_run_reads_the_run_outputs() -> None:
    metrics = {f"test/{metric}": float(i) for i, metric in enumerate(METRICS)}
    row = summarise_run(
        "cbam_small",
        metrics,
        {
            "data_hash": "d1",
            "feature_extractor_hash": "abc",
            "fid_n_samples": 1000,
            "nll_iw_k": 10,
            "nll_iw_n_images": 500,
        },
        {"model": {"variant": "cbam"}, "train": {"seed": 2}, "n_parameters": 123},
        pd.DataFrame({"train/epoch_seconds": [10.0, 12.0, 11.0]}),
    )
    assert row == {
        "entry": "cbam_small",
        "architecture": "cbam",
        "seed": 2,
        "n_parameters": 123,
        "epoch_seconds": 11.0,
        "data_hash": "d1",
        "feature_extractor_hash": "abc",
        "fid_n_samples": 1000,
        "nll_iw_k": 10,
        "nll_iw_n_images": 500,
        **{metric: float(i) for i, metric in enumerate(METRICS)},
    }
