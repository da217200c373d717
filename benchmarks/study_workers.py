"""Study throughput with cells side by side: `attn-study` (its Dask LocalCluster) on the real
data with the default budget, the same number of cells once with 1 worker (all cores in
one process) and once with `--workers N`; reports cells per hour of each and their ratio,
then the time `attn-study` takes again once every cell is finished (nothing left to run).

Each configuration trains its own seeds (10, 11, ... and then the next ones), so neither
reuses the other's saved epochs or evaluations. Runs in throw-away copies of this project
(its conf, its prepared data and stored feature extractor). Needs `kedro run` to have
prepared the data and the extractor once.

    .venv/bin/python -m benchmarks.study_workers [--entry none] [--cells 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._project import PROJECT, project_env, scratch_project

ATTN_STUDY = str(Path(sys.executable).with_name("attn-study"))


def _copy(root: Path, entry: str, seeds: list[int]) -> Path:
    return scratch_project(
        root, f"study: {{entries: [{entry}], seeds: {seeds}, baselines: [{entry}]}}\n"
    )


def _attn_study(project: Path, workers: int) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [ATTN_STUDY, "--workers", str(workers), "--dashboard", "none"],
        cwd=project,
        env=project_env(project),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    return out


def _cells_per_hour(project: Path, workers: int) -> tuple[float, str]:
    out = _attn_study(project, workers)
    line = re.search(r"study: (\d+) cells in ([\d.]+) min, ([\d.]+) cells per hour", out.stderr)
    plan = re.search(r"study: (\d+ at a time with \d+ thread\(s\) each)", out.stderr)
    return float(line.group(3)), f"{line.group(1)} cells in {line.group(2)} min, {plan.group(1)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entry", default="none")
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--only", type=int, help="run only this number of workers (no ratio is printed)"
    )
    args = parser.parse_args()
    if not (PROJECT / "data" / "05_model_input").is_dir():
        sys.exit("no prepared data: run `kedro run` first")
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    print(*[line for line in cpu.splitlines() if "Model name" in line or "avx512" in line])
    with tempfile.TemporaryDirectory() as scratch:
        results = {}
        for i, workers in enumerate((1, args.workers) if args.only is None else (args.only,)):
            seeds = list(range(10 + i * args.cells, 10 + (i + 1) * args.cells))
            project = _copy(Path(scratch) / f"workers{workers}", args.entry, seeds)
            results[workers], described = _cells_per_hour(project, workers)
            print(f"workers {workers}: {described}: {results[workers]:.1f} cells per hour")
        started = time.monotonic()
        _attn_study(project, args.workers)  # every cell finished: found on MLflow
        print(f"the same study again, every cell finished: {time.monotonic() - started:.1f} s")
    if args.only is not None:
        return
    ratio = results[args.workers] / results[1]
    print(f"throughput of {args.workers} workers / 1 worker: {ratio:.2f}")


if __name__ == "__main__":
    main()
