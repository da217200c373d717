"""Shared by the benchmarks that run the project's commands: a scratch copy of the project
with its own store, and the environment its commands run with."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

#: What `kedro run` has prepared that a copy reuses: raw files, the split, the extractor.
PREPARED = ("01_raw", "05_model_input", "06_models/feature_extractor")


def scratch_project(root: Path, local_parameters: str, data: tuple[str, ...] = PREPARED) -> Path:
    """A copy of the project's configuration at ``root`` with ``local_parameters`` as its
    ``conf/local/parameters.yml`` and the prepared ``data`` folders that exist; the package
    is this environment's."""
    shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "conf" / "local" / "parameters.yml").write_text(local_parameters)
    shutil.copy(PROJECT / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()
    for folder in data:
        if (PROJECT / "data" / folder).is_dir():
            shutil.copytree(PROJECT / "data" / folder, root / "data" / folder)
    return root


def project_env(project: Path) -> dict[str, str]:
    """The environment of a command run in ``project``: its own SQLite store, no telemetry."""
    return {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlruns' / 'mlflow.db'}",
    }
