"""fp32 against bf16 training: paired differences of the test figures, seed by seed.

Reads the ``runs.csv`` of two studies of the same entries and seeds, one trained with
``train.precision: fp32`` and one with ``bf16`` (two project copies, each with its
``conf/local`` naming the precision and the study), and prints, per entry and metric, the
mean of the paired differences bf16 - fp32 with its 95% t interval.

    attn-study   # in each copy
    .venv/bin/python -m benchmarks.precision_parity \\
        FP32_COPY/data/08_reporting/mnist/study/runs.csv \\
        BF16_COPY/data/08_reporting/mnist/study/runs.csv
"""

from __future__ import annotations

import argparse
import math

import pandas as pd
from scipy import stats

METRICS = (
    "neg_elbo",
    "nll_iw",
    "fid_proxy",
    "steer_emphasis_ink_share",
    "steer_suppression_ink_share",
    "steer_confidence_ratio",
    "epoch_seconds",
)


def paired(fp32: pd.DataFrame, bf16: pd.DataFrame) -> pd.DataFrame:
    """One row per (entry, metric): seeds paired, mean difference bf16 - fp32, 95% interval."""
    both = fp32.merge(bf16, on=["entry", "seed"], suffixes=("_fp32", "_bf16"))
    rows = []
    for entry, cells in both.groupby("entry", sort=False):
        for metric in METRICS:
            difference = (cells[f"{metric}_bf16"] - cells[f"{metric}_fp32"]).dropna()
            n = len(difference)
            if n == 0:
                continue
            mean = float(difference.mean())
            half = (
                float(stats.t.ppf(0.975, n - 1) * difference.std(ddof=1) / math.sqrt(n))
                if n > 1
                else math.nan
            )
            rows.append(
                {
                    "entry": entry,
                    "metric": metric,
                    "seeds": n,
                    "fp32 mean": float(cells[f"{metric}_fp32"].mean()),
                    "bf16 - fp32": mean,
                    "95% half-width": half,
                    "per seed": " / ".join(f"{d:+.2f}" for d in difference),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fp32_runs")
    parser.add_argument("bf16_runs")
    args = parser.parse_args()
    table = paired(pd.read_csv(args.fp32_runs), pd.read_csv(args.bf16_runs))
    columns = list(table.columns)
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in table.itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
