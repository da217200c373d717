"""Project settings: https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import os
import warnings
from pathlib import Path

import yaml
from kedro.config import OmegaConfigLoader
from mlflow.telemetry.client import set_telemetry_client

from attn_pipeline.allocator import retain_freed_memory
from attn_pipeline.hooks import RunPlanCheckHook
from attn_pipeline.registry import ModelRegistryHook
from attn_pipeline.run_lifecycle import RunLifecycleHook
from attn_pipeline.run_parameters import CONFIG_LOADER_ARGS  # noqa: F401 (Kedro reads it here)
from attn_pipeline.tracking import CatalogLoggingHook, EntryRunsHook, FlatParamsMlflowHook

# omegaconf 2.4 deprecates the resolver API that kedro 1.7 and kedro-mlflow still call;
# the warning repeats on every run and says nothing actionable for this project.
warnings.filterwarnings("ignore", message="register_new_resolver", category=UserWarning)


def _telemetry_consented(project_path: Path) -> bool:
    """Whether the project folder's ``.telemetry`` file grants consent (``consent: true``)."""
    try:
        granted = yaml.safe_load((project_path / ".telemetry").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(granted, dict) and granted.get("consent") is True


# kedro-telemetry treats a missing `.telemetry` file as consent, so a packaged run
# (`python -m attn_pipeline` in a folder of its own) would send usage data: nothing is sent
# unless the folder's `.telemetry` says `consent: true`. Set before any session's hooks ask.
if not _telemetry_consented(Path.cwd()):
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

# MLflow sends usage telemetry unless told not to. Kedro's plugins import mlflow before
# this file, so its client is rebuilt once the switch is set (a user's own setting wins).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
set_telemetry_client()

# every kedro command of the project: freed tensors' memory is reused, not faulted in again
retain_freed_memory()

_entry_runs = EntryRunsHook()
HOOKS = (
    RunPlanCheckHook(),
    RunLifecycleHook(),
    FlatParamsMlflowHook(),
    _entry_runs,
    CatalogLoggingHook(_entry_runs),
    ModelRegistryHook(_entry_runs),
)
# kedro-mlflow's own hook is replaced by FlatParamsMlflowHook (its subclass), not run twice
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)  # its distribution name, as its metadata spells it

# How every parameters file is read: CONFIG_LOADER_ARGS (imported above) is defined in
# attn_pipeline.run_parameters, which reads them the same way outside a session.
CONFIG_LOADER_CLASS = OmegaConfigLoader
