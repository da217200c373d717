"""The run's parameters, read once, by Kedro's own configuration loader.

Kedro builds the pipelines before any hook can hand them a run's parameters, so the
project's pipeline registry and its hooks read them here: a session's context hands them
over (:class:`attn_pipeline.hooks.RunPlanCheckHook`, first of the hooks), and code run
without a session (``kedro registry list``, benchmarks, tests) reads the files with Kedro's
``OmegaConfigLoader``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from kedro.framework.project import settings
from omegaconf.resolvers import oc

#: An environment's one file (conf/<environment>/): what it changes, globals and parameters.
ENVIRONMENT_FILE = "environment.yml"

#: The configuration loader's settings (settings.py hands them to Kedro's sessions).
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment's `train: {batch_size: 64}` changes that key and keeps base's others
    # (the default, "destructive", would replace base's whole `train` block).
    "merge_strategy": {"parameters": "soft"},
    # Lets mlflow.yml read MLFLOW_TRACKING_URI (Kedro allows oc.env only in credentials).
    "custom_resolvers": {"oc.env": oc.env},
    "config_patterns": {
        # kedro-mlflow adds this pattern itself, but only after the project's hooks have run
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
        # an environment is one file, environment.yml: its globals (the data set's names)
        # and its parameters, merged into base's blocks
        "globals": ["globals.yml", ENVIRONMENT_FILE],
        "parameters": ["parameters*", "parameters*/**", "**/parameters*", ENVIRONMENT_FILE],
    },
}

#: The parameters of the run under way, once its context exists.
_run_parameters: dict[str, Any] | None = None


def load_parameters(conf_source: Path | None = None, env: str | None = None) -> dict[str, Any]:
    """The project's parameters as Kedro reads them, for code that runs without a session
    (``kedro registry list``, benchmarks, tests): ``conf_source`` (default: ``conf/`` in the
    working directory), base overlaid by ``env`` (``KEDRO_ENV``, else local).

    Within a run, use the session's own loader (``context.config_loader["parameters"]``):
    a second ``OmegaConfigLoader`` re-registers the ``globals`` resolver for every loader,
    so the session's catalog would then resolve ``${globals:dataset}`` from this one.
    """
    conf_source = conf_source or Path.cwd() / settings.CONF_SOURCE
    if not conf_source.exists():
        raise FileNotFoundError(
            f"no configuration folder {conf_source}: run kedro from the project's root, or "
            "give the configuration with --conf-source"
        )
    loader = OmegaConfigLoader(
        conf_source=str(conf_source), env=env or os.environ.get("KEDRO_ENV"), **CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


def set_run_parameters(params: dict[str, Any]) -> None:
    """Make ``params`` (a session's, as its configuration loader read them) the run's."""
    global _run_parameters  # noqa: PLW0603 (one run's parameters per process at a time)
    _run_parameters = params


def run_parameters() -> dict[str, Any]:
    """The parameters of the run under way, as Kedro's configuration loader read them once
    when its context was created; without a session, the files' (:func:`load_parameters`)."""
    return _run_parameters if _run_parameters is not None else load_parameters()
