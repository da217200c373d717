"""Freed tensors' memory is reused by the next ones instead of being faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attn_pipeline.training.allocator import retain_freed_memory

#: Page faults of 10 training steps of the conv baseline (after 3 to warm up).
FAULTS = """
import resource, sys, torch
if sys.argv[1] == "retain":
    from attn_pipeline.training.allocator import retain_freed_memory
    assert retain_freed_memory()
torch.set_num_threads(1)
from attn_pipeline.spec.config import ModelConfig
from attn_pipeline.models.losses import bernoulli_nll
from attn_pipeline.models import build_vae
model = build_vae(ModelConfig(variant="none"), (1, 28, 28))
optimizer = torch.optim.Adam(model.parameters())
x = torch.rand(128, 1, 28, 28)
def step():
    loss = bernoulli_nll(model(x).logits, x).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.process
def test_training_steps_reuse_freed_memory() -> None:
    """glibc's defaults fault a step's large buffers in afresh each step (thousands of
    pages); with the thresholds raised, a warmed-up step faults in almost nothing."""
    if not retain_freed_memory():
        pytest.skip("not glibc: its malloc thresholds do not apply")
    default, retained = _faults("default"), _faults("retain")
    assert retained * 20 < default, (default, retained)


@pytest.mark.process
def test_every_kedro_command_of_the_project_reuses_freed_memory() -> None:
    """settings.py, which every `kedro` command of the project imports, applies it."""
    probe = (
        "import attn_pipeline.training.allocator as a, sys; calls = []; "
        "a.retain_freed_memory = lambda: calls.append(1) or True; "
        "import attn_pipeline.settings; sys.stdout.write(str(len(calls)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout == "1"
