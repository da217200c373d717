"""Kill and resume on the real data: `kedro run --pipelines train` of one variant for 6
epochs, SIGKILLed while epoch 4 trains, then run again; against the same command never
interrupted. Reports whether the final weights are bitwise equal and the training times.

Runs in throw-away copies of this project (its conf, its prepared data and stored feature
extractor), so nothing of the project's own runs is touched. Needs `kedro run` to have
prepared the data once.

    .venv/bin/python -m benchmarks.kill_resume [--variant none] [--epochs 6] [--kill-after 3]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._project import PROJECT, project_env, scratch_project

KEDRO = str(Path(sys.executable).with_name("kedro"))


def _copy(root: Path, variant: str) -> Path:
    return scratch_project(root, f"entries: [{variant}]\n", data=("05_model_input",))


def _start(project: Path, epochs: int) -> subprocess.Popen:
    return subprocess.Popen(
        [KEDRO, "run", "--pipelines", "train", "--params", f"train.epochs={epochs}"],
        cwd=project,
        env=project_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> str:
    output = process.communicate()[0]
    if process.returncode != 0:
        sys.exit(output[-3000:])
    return output


def _training_seconds(output: str) -> float:
    """The sum of the epochs' own times, as the log reports them."""
    return sum(float(s) for s in re.findall(r"epoch \d+/\d+ .*\((\d+\.\d) s\)", output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="none")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--kill-after", type=int, default=3, help="kill once this epoch is saved")
    args = parser.parse_args()
    if not (PROJECT / "data" / "05_model_input").is_dir():
        sys.exit("no prepared data: run `kedro run --pipelines data_prep` first")
    with tempfile.TemporaryDirectory() as scratch:
        reference = _copy(Path(scratch) / "uninterrupted", args.variant)
        started = time.perf_counter()
        whole = _finish(_start(reference, args.epochs))
        whole_seconds = time.perf_counter() - started

        project = _copy(Path(scratch) / "killed", args.variant)
        process = _start(project, args.epochs)
        training = project / "data" / "06_models" / "mnist" / args.variant / "training"
        epoch_file = f"epoch_{args.kill_after:03d}.pt"
        while True:
            saved = list(training.glob(f"*/{epoch_file}"))
            resume = saved[0].with_name("resume.pt") if saved else None
            if resume and resume.exists() and resume.stat().st_mtime >= saved[0].stat().st_mtime:
                break
            if process.poll() is not None:
                sys.exit("the run ended before it could be killed")
            time.sleep(0.05)
        time.sleep(2)  # well into the next epoch
        process.send_signal(signal.SIGKILL)
        process.wait()
        started = time.perf_counter()
        resumed = _finish(_start(project, args.epochs))
        resumed_seconds = time.perf_counter() - started

        def weights(root: Path) -> dict[str, torch.Tensor]:
            path = root / "data" / "06_models" / "mnist" / args.variant / "model.pt"
            return torch.load(path, weights_only=True)["state_dict"]

        expected, actual = weights(reference), weights(project)
        equal = all(torch.equal(expected[name], actual[name]) for name in expected)
        after = re.search(r"resuming after epoch (\d+)", resumed)
        print(f"{args.variant}, {args.epochs} epochs, killed after epoch {args.kill_after} saved")
        print(f"rerun resumed after epoch {after.group(1) if after else 'none (started over)'}")
        print(f"final weights bitwise equal to the uninterrupted run's: {equal}")
        print(
            f"training (sum of epoch times): uninterrupted {_training_seconds(whole):.1f} s, "
            f"rerun {_training_seconds(resumed):.1f} s; wall clock of the whole command "
            f"{whole_seconds:.0f} s vs {resumed_seconds:.0f} s"
        )


if __name__ == "__main__":
    main()
