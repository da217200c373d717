"""What every `kedro` command of the project pays before it does anything."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "matplotlib", "torchvision", "attn_pipeline.pipeline_registry")


@pytest.mark.process  # a fresh interpreter: this one has imported everything
def test_the_project_settings_import_neither_torch_nor_the_pipelines() -> None:
    """Kedro imports `settings.py` for every command (`kedro --help`, `kedro viz`, `kedro
    mlflow ui`); torch and the pipelines are imported when a run starts."""
    script = (
        "import sys, attn_pipeline.settings; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
