"""The data's own bound on steering by fading: how much of an image's ink a half of it
holds, over the test set (percentiles), beside what emphasising a half asks of a model.

A model steered to put +25 points of ink into the top half draws images whose top half holds
far more than any but a few test digits: fading has no more room than the data gives.

    .venv/bin/python -m benchmarks.ink_share_bound [--dataset mnist fashion_mnist]
"""

from __future__ import annotations

import argparse

from attn_pipeline.metrics.steering import ink_share_percentiles
from benchmarks._data import RAW, load_splits

PERCENTILES = (5, 50, 95, 99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", nargs="+", default=["mnist"])
    args = parser.parse_args()
    print("| data set | half | " + " | ".join(f"p{q}" for q in PERCENTILES) + " | p99 - p50 |")
    print("|---|---|" + "---|" * (len(PERCENTILES) + 1))
    for dataset in args.dataset:
        if not (RAW / dataset).is_dir():
            raise SystemExit(f"no raw {dataset}: run `attn-fetch-data {dataset}` first")
        _, _, test = load_splits(dataset)
        for half, values in ink_share_percentiles(test["images"], PERCENTILES).items():
            cells = " | ".join(f"{values[q]:.2f}" for q in PERCENTILES)
            print(f"| {dataset} | {half} | {cells} | {values[99] - values[50]:+.2f} |")


if __name__ == "__main__":
    main()
