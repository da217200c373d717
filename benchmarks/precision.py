"""Training steps in fp32 and under bfloat16 autocast, for every variant, on this machine.

For each entry of ``conf/base/parameters_train.yml`` (``--entries`` to choose), one
optimisation step of the project's training loop (batch 128, channels_last, fused Adam) is
timed in fp32 and in bf16, the two interleaved in one process so that both see the same
machine state; the fastest of ``--repeats`` rounds of ``--steps`` steps is reported, with
1 thread and with all of the machine's threads. The CPU and what torch reports of it
(AVX-512 BF16, AMX) come first: where bfloat16 is emulated (AVX2 only), bf16 is slower.

    .venv/bin/python -m benchmarks.precision [--repeats 6] [--steps 20]
    .venv/bin/python -m benchmarks.precision --whole-run

``--whole-run`` times the default ``kedro run`` (train, evaluate and generate every entry of
``entries`` at the default budget) once with ``train.precision: fp32`` and once with
``bf16``, one after the other, each in a scratch copy of the project with a store of its own
(the prepared data and the stored extractor copied in, so both do the same work), and prints
both wall-clock times and their ratio (after `kedro run` has prepared the data once).

Timings taken while other processes share the cores exaggerate the ratio: run it on an
idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from attn_pipeline.models import build_vae
from attn_pipeline.spec.config import ModelConfig, TrainConfig
from attn_pipeline.spec.parameters import load_parameters
from attn_pipeline.training.loop import _step  # noqa: PLC2701 (the loop's own step is what is timed)
from attn_pipeline.training.precision import native_bf16, resolve_precision
from benchmarks._project import project_env, scratch_project

CPU = torch.device("cpu")


def _batch(size: int = 128) -> torch.Tensor:
    """Real MNIST images where `kedro run` has prepared them, else uniform noise."""
    prepared = Path("data/05_model_input/mnist_train.pt")
    if prepared.is_file():
        images = torch.load(prepared, weights_only=True)["images"][:size]
    else:
        images = torch.rand(size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return images.contiguous(memory_format=torch.channels_last)


def time_steps(config: ModelConfig, precision: str, x: torch.Tensor, steps: int) -> float:
    """Seconds per step, over ``steps`` steps after two untimed ones."""
    torch.manual_seed(0)
    model = build_vae(config, (1, 28, 28)).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    train = TrainConfig(precision=precision, device="cpu")
    resolved = resolve_precision(precision, CPU)
    for _ in range(2):
        _step(model, optimizer, x, beta=1.0, where="bench", config=train, precision=resolved)
    started = time.perf_counter()
    for _ in range(steps):
        _step(model, optimizer, x, beta=1.0, where="bench", config=train, precision=resolved)
    return (time.perf_counter() - started) / steps


def whole_runs() -> None:
    """The default `kedro run`, fp32 then bf16, each timed whole."""
    kedro = str(Path(sys.executable).with_name("kedro"))
    seconds = {}
    with tempfile.TemporaryDirectory() as scratch:
        for precision in ("fp32", "bf16"):
            project = scratch_project(
                Path(scratch) / precision, f"train: {{precision: {precision}}}\n"
            )
            started = time.perf_counter()
            run = subprocess.run(
                [kedro, "run"],
                cwd=project,
                env=project_env(project),
                capture_output=True,
                text=True,
                check=False,
            )
            seconds[precision] = time.perf_counter() - started
            if run.returncode != 0:
                sys.exit(run.stderr[-3000:])
            print(f"default kedro run, {precision}: {seconds[precision]:.0f} s", flush=True)
    print(f"fp32 / bf16: {seconds['fp32'] / seconds['bf16']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--entries", nargs="+", default=None)
    parser.add_argument("--whole-run", action="store_true", help="the default kedro run, timed")
    args = parser.parse_args()
    if args.whole_run:
        _, why = native_bf16(CPU)
        print(f"CPU: {platform.processor() or torch.cpu.get_capabilities().get('cpu_name')}; {why}")
        whole_runs()
        return
    params = load_parameters(Path("conf"), env="base")
    entries = args.entries or [k for k, v in params.items() if isinstance(v, dict) and "model" in v]
    _, why = native_bf16(CPU)
    print(f"CPU: {platform.processor() or torch.cpu.get_capabilities().get('cpu_name')}; {why}")
    print(
        f"torch {torch.__version__}, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    x = _batch()
    print("| entry | threads | fp32 ms/step | bf16 ms/step | fp32 / bf16 |")
    print("|---|---|---|---|---|")
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        for entry in entries:
            config = ModelConfig.model_validate(params[entry]["model"])
            best = {"fp32": float("inf"), "bf16": float("inf")}
            for _ in range(args.repeats):
                for precision in ("fp32", "bf16"):  # interleaved: both see the same state
                    seconds = time_steps(config, precision, x, args.steps)
                    best[precision] = min(best[precision], seconds)
            ratio = best["fp32"] / best["bf16"]
            print(
                f"| {entry} | {threads} | {best['fp32'] * 1e3:.1f} | {best['bf16'] * 1e3:.1f} "
                f"| {ratio:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
