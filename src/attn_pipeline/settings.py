"""Project settings: https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import atexit
import gc
import os
import sys
import warnings
from pathlib import Path

import yaml
from kedro.config import OmegaConfigLoader
from mlflow.telemetry.client import set_telemetry_client

from attn_pipeline.hooks import RunPlanCheckHook
from attn_pipeline.spec.parameters import CONFIG_LOADER_ARGS  # noqa: F401 (Kedro reads it here)
from attn_pipeline.tracking.runs import FlatParamsMlflowHook, TrackingHook
from attn_pipeline.training.allocator import retain_freed_memory

# omegaconf 2.4 deprecates the resolver API that kedro 1.7 and kedro-mlflow still call
warnings.filterwarnings("ignore", message="register_new_resolver", category=UserWarning)

# kedro-telemetry takes a missing `.telemetry` file as consent, so a packaged run would send
# usage data: nothing is sent unless the folder's `.telemetry` says `consent: true`.
try:
    _consent = yaml.safe_load((Path.cwd() / ".telemetry").read_text())
except (OSError, yaml.YAMLError):
    _consent = None
if not (isinstance(_consent, dict) and _consent.get("consent") is True):
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
# MLflow's usage telemetry, off unless the user says otherwise; its client is rebuilt since
# Kedro's plugins imported mlflow before this file
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
set_telemetry_client()
# MLflow's download bars belong in a terminal, not in the log files a study or a CI run keeps
if not sys.stderr.isatty():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# every kedro command of the project: freed tensors' memory is reused, not faulted in again
retain_freed_memory()
# the interpreter's last garbage collections walk every object torch, MLflow and SQLAlchemy
# made (seconds per command): at exit they are frozen out of it, and the system frees them
atexit.register(gc.freeze)

HOOKS = (RunPlanCheckHook(), FlatParamsMlflowHook(), TrackingHook())
# kedro-mlflow's own hook is replaced by FlatParamsMlflowHook (its subclass), not run twice
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)
CONFIG_LOADER_CLASS = OmegaConfigLoader
