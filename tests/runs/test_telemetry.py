"""No usage telemetry leaves a project command unless a user opts in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT


@pytest.mark.process  # kedro-telemetry's check in a clean environment
def test_kedro_telemetry_is_refused_by_the_project_itself() -> None:
    """Without KEDRO_DISABLE_TELEMETRY / DO_NOT_TRACK: the `.telemetry` file decides."""
    clean = {
        k: v for k, v in os.environ.items() if k not in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    }
    script = (
        "from pathlib import Path; from kedro_telemetry import plugin; "
        f"print(plugin._check_for_telemetry_consent(Path({str(PROJECT_ROOT)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=clean, capture_output=True, text=True, check=False
    )
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.process  # a fresh interpreter that imports the whole project
def test_mlflow_telemetry_is_off_once_the_project_settings_load() -> None:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "CI")
    }
    script = (
        "import mlflow; from mlflow.telemetry.client import get_telemetry_client as get; "
        "import attn_pipeline.settings; print(get() is None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=clean, capture_output=True, text=True, check=False
    )
    assert out.stdout.strip() == "True", out.stderr
