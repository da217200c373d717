"""docs/extending.md, followed as written: its steps add a variant to a copy of the project,
whose model tests then pass and which a tiny `kedro run` trains, evaluates and draws."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import PROJECT_ROOT, TINY_RUN, project_copy

GUIDE = PROJECT_ROOT / "docs" / "extending.md"
#: A step of the guide: add the next block to PATH (at its end, or after the first line
#: holding TEXT).
STEP = re.compile(r"<!--\s*doc-test:\s*add\s+(\S+)(?:\s+after\s+(.+?))?\s*-->")


def guide_steps(text: str) -> list[tuple[str, str | None, str]]:
    """``(path, after, code)`` of each step, in the order the guide gives them."""
    steps = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        step = STEP.search(line)
        if step:
            opening = index + 1
            assert lines[opening].startswith("```"), f"line {opening + 1}: no block after step"
            closing = next(i for i in range(opening + 1, len(lines)) if lines[i] == "```")
            steps.append((step.group(1), step.group(2), "\n".join(lines[opening + 1 : closing])))
    return steps


def apply_step(root: Path, path: str, after: str | None, code: str) -> None:
    target = root / path
    text = target.read_text() if target.exists() else ""
    if after is None:
        target.write_text(f"{text.rstrip()}\n\n\n{code}\n" if text else f"{code}\n")
        return
    start = text.index(after)  # ValueError: the guide names a line the file no longer has
    end = text.index("\n", start) + 1
    target.write_text(f"{text[:end]}{code}\n{text[end:]}")


def test_the_guide_has_its_four_steps() -> None:
    """The guide's steps, parsed: the module, the table entry, the parameters, the test."""
    steps = guide_steps(GUIDE.read_text())
    assert [path for path, _, _ in steps] == [
        "src/attn_pipeline/models/pixel_gate.py",
        "src/attn_pipeline/spec/variants.py",
        "conf/base/parameters_train.yml",
        "tests/models/test_models.py",
    ]
    assert all((PROJECT_ROOT / path).exists() for path, _, _ in steps[1:])


@pytest.mark.process
def test_a_variant_added_as_the_guide_says_passes_its_tests_and_runs(tmp_path: Path) -> None:
    root = project_copy(tmp_path / "project", {**TINY_RUN, "entries": ["pixel_gate"]})
    shutil.rmtree(root / "src")
    for folder in ("src", "tests"):
        shutil.copytree(
            PROJECT_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    for path, after, code in guide_steps(GUIDE.read_text()):
        apply_step(root, path, after, code)
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "KEDRO_DISABLE_TELEMETRY": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/models"]
        + ["-m", "not pipeline and not process", "-k", "pixel_gate"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    passed = re.search(r"(\d+) passed", tests.stdout)
    # its shapes, its training, and the mlp backbone refused
    assert passed and int(passed.group(1)) >= 3, tests.stdout[-1000:]

    run = subprocess.run(
        [str(Path(sys.executable).with_name("kedro")), "run"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    (entry,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'pixel_gate'")
    assert entry.info.status == "FINISHED"
    assert "test/nll_iw" in entry.data.metrics
    assert client.get_registered_model("attn_pipeline.mnist.pixel_gate")
