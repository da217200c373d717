"""MLflow tracking, in one place for every variant.

kedro-mlflow opens one run per ``kedro run``. :class:`VariantRunsHook` gives each
pipeline namespace (one model variant) a child run of it, so the MLflow UI's compare view
lines the variants up under the same metric names. Nodes stay free of MLflow: what a
variant's run receives is declared in the catalog, through a dataset's metadata::

    metadata:
      variant_run: artifact   # log the saved file as an artifact
      # or: metrics (a dict of floats), params (a nested dict, flattened), tags (a dict),
      # model (an nn.Module)

Only per-epoch curves are logged from inside a node, through :func:`log_epoch_metrics`,
because they must reach MLflow while training runs.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import mlflow
import torch
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Node
from kedro_mlflow.framework.hooks import MlflowHook
from mlflow.entities import RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from pydantic import BaseModel

from attn_pipeline import registry
from attn_pipeline.config import RegistryConfig
from attn_pipeline.fingerprints import state_fingerprint
from attn_pipeline.metrics.table import METRICS
from attn_pipeline.run_guard import prepare_tracking_store
from attn_pipeline.study import CELL_KEY_TAG, cell_key, parse_cell_namespace

logger = logging.getLogger(__name__)

METADATA_KEY = "variant_run"
#: Tags that say which process owns a run, so that a later run can tell a run left RUNNING
#: by a killed process from one that is still going.
PID_TAG, HOST_TAG = "attn_pipeline.pid", "attn_pipeline.host"
#: The run tag naming the registry version of the run's generator (``name/version``).
REGISTERED_TAG = "attn_pipeline.registered_model"
_KINDS = ("artifact", "metrics", "params", "tags", "model")


def log_epoch_metrics(epoch: int, metrics: dict[str, float]) -> None:
    """Log one epoch's metrics to the active run (the variant's), if MLflow is on."""
    if mlflow.active_run() is not None:
        mlflow.log_metrics(metrics, step=epoch)


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"latent_dim": 20}} -> {"model.latent_dim": 20}``."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, prefix=f"{name}.")
        else:
            flat[name] = value
    return flat


def log_sampler_model(sampler: torch.nn.Module) -> ModelInfo:
    """Log a ``z (B, D) -> images`` module to the active run as ``model``, with a signature.

    Saved in MLflow's ``pt2`` format (a ``torch.export`` graph): it loads without this
    project's code and without unpickling anything. The requirements are given, not
    inferred: inference re-imports the model in a subprocess and costs seconds per model.
    """
    sampler = sampler.cpu()
    example = torch.randn(2, sampler.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = sampler(example)
    # MLflow checks the input example by loading the model back, on CUDA where torch sees a
    # GPU, and a graph exported with CPU weights cannot load there (seen on an H100)
    previous = os.environ.get("MLFLOW_DEFAULT_PREDICTION_DEVICE")
    os.environ["MLFLOW_DEFAULT_PREDICTION_DEVICE"] = "cpu"
    try:
        return mlflow.pytorch.log_model(
            sampler,
            name="model",
            input_example=example.numpy(),
            signature=infer_signature(example.numpy(), output.numpy()),
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    finally:
        if previous is None:
            del os.environ["MLFLOW_DEFAULT_PREDICTION_DEVICE"]
        else:
            os.environ["MLFLOW_DEFAULT_PREDICTION_DEVICE"] = previous


def owner_tags() -> dict[str, str]:
    """The tags that name the process owning a run (see :func:`mark_orphaned_runs_killed`)."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


#: Set by a driver that runs one parent run in several `kedro run` steps (attn-study): the
#: step leaves the parent RUNNING when it ends (kedro-mlflow ends it), since the parent is
#: finished only once the driver's last step is; the driver ends it.
PARENT_STAYS_RUNNING = "ATTN_PIPELINE_PARENT_STAYS_RUNNING"

#: The name Kedro gives the pipeline `kedro run` runs without --pipelines.
DEFAULT_PIPELINE = "__default__"
#: MLflow 3's experiment type, which decides the page its UI opens an experiment on.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def parent_run_name(run_params: dict[str, Any]) -> str:
    """The parent run's name: what ran. kedro-mlflow names it after the pipelines, and
    ``__default__`` for a bare ``kedro run``, also when ``--tags`` picked some of its nodes:
    here ``default``, the pipelines (``train``, ``data_prep+train``), or the tags
    (``kedro run --tags evaluate``: ``evaluate``)."""
    named = [name for name in run_params.get("pipeline_names") or () if name != DEFAULT_PIPELINE]
    if not named:
        named = list(run_params.get("tags") or ())
    return "+".join(named) or "default"


def runner_name(described: str) -> str:
    """The runner's class name from what Kedro records of it: the object's repr (``<kedro.
    runner.sequential_runner.SequentialRunner object at 0x...>``, a new address every run,
    which kedro-mlflow tags as it is), or ``None`` for the session's default runner."""
    if described == "None":
        return "SequentialRunner"
    match = re.fullmatch(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>", described)
    return match.group(1) if match else described


class FlatParamsMlflowHook(MlflowHook):
    """kedro-mlflow's hook, registered by the project (settings.py) in place of the plugin's
    own, so that typed parameters reach the parent run as flattened values
    (``train.epochs = 8``): kedro-mlflow flattens dicts only, and Kedro hands the nodes
    this project's pydantic configs, which it would log as one repr each."""

    @hook_impl
    def before_node_run(
        self, node: Node, catalog: CatalogProtocol, inputs: dict[str, Any], is_async: bool
    ) -> None:
        plain = {
            name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            for name, value in inputs.items()
        }
        super().before_node_run(node=node, catalog=catalog, inputs=plain, is_async=is_async)


def end_open_runs(status: str = "KILLED", keep: str | None = None) -> None:
    """End every run this process has open (children first, then the parent), up to the
    run ``keep`` (a driver's parent, which its driver ends), left open and untouched."""
    while (run := mlflow.active_run()) is not None and run.info.run_id != keep:
        mlflow.end_run(status)


def mark_orphaned_runs_killed(experiment_id: str) -> list[str]:
    """Mark KILLED the runs of this project left RUNNING on this host by a process that is
    gone (SIGKILL, a crash): they would otherwise stay RUNNING forever. Runs without this
    project's owner tags, or whose process still runs, are left alone. Returns their ids."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
    )
    ended = []
    for run in running:
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and not _process_alive(int(pid)):
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    if ended:
        logger.warning("marked %d run(s) KILLED, left RUNNING by a killed process", len(ended))
    return ended


def _git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


class VariantRunsHook:
    """One nested MLflow run per namespace (variant), under kedro-mlflow's run."""

    def __init__(self) -> None:
        self._catalog: CatalogProtocol | None = None
        self._params: dict[str, Any] = {}
        self._project_path = Path.cwd()
        self._runs: dict[str, str] = {}  # namespace -> run id
        # namespace -> its generator and the hash of its weights, until registered
        self._models: dict[str, tuple[torch.nn.Module, str]] = {}
        self._entries: dict[str, dict[str, str]] = {}  # namespace -> entry and seed
        self._versions: dict[str, ModelVersion] = {}  # namespace -> its registered version
        self._registry = RegistryConfig()
        self._activated: set[str] = set()  # nodes whose run this hook opened
        self._previous_handlers: dict[int, Any] = {}
        self._interrupted = 0  # the signal that stopped the run, if one did
        self._driven_parent: str | None = None  # a driver's parent run, left RUNNING
        self._resumed_name: str | None = None  # the name of a run resumed by id
        # before MLflow's own exit handler (registered at its import), which would end the
        # runs an interrupt left open as FINISHED
        atexit.register(self._end_runs_if_interrupted)

    # tryfirst: the store must exist, created and migrated under a lock, before
    # kedro-mlflow opens it (several runs may start at once on a new store).
    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        self._params = context.config_loader["parameters"]
        self._project_path = Path(context.project_path)
        self._runs.clear()
        self._models.clear()
        self._entries.clear()
        self._versions.clear()
        self._registry = RegistryConfig.model_validate(self._params.get("registry", {}))
        try:
            uri = context.config_loader["mlflow"]["server"]["mlflow_tracking_uri"]
        except (KeyError, TypeError, MissingConfigException):
            uri = None
        if uri:
            prepare_tracking_store(str(uri), self._project_path)
        # a run resumed by id (MLFLOW_RUN_ID: a driver's, or the user's) keeps its name,
        # which kedro-mlflow would replace by this run's pipeline names
        resumed = os.environ.get("MLFLOW_RUN_ID")
        self._resumed_name = (
            mlflow.MlflowClient(str(uri) if uri else None).get_run(resumed).info.run_name
            if resumed
            else None
        )

    @hook_impl
    def after_catalog_created(self, catalog: CatalogProtocol) -> None:
        self._catalog = catalog

    def _tags(self, namespace: str) -> dict[str, str]:
        tags = {
            "namespace": namespace,
            "dataset": str(self._params.get("dataset", "")),
            **owner_tags(),
        }
        commit = _git_commit(self._project_path)
        if commit:
            tags["mlflow.source.git.commit"] = commit
        cell = parse_cell_namespace(namespace)
        if cell is not None:  # a study cell: its key lets later studies find it finished
            tags[CELL_KEY_TAG] = cell_key(self._params, *cell)
        return tags

    def _open(self, namespace: str) -> None:
        """Make the namespace's run the active one (creating it on first use)."""
        if namespace in self._runs:
            mlflow.start_run(run_id=self._runs[namespace], nested=True)
        else:
            run = mlflow.start_run(run_name=namespace, nested=True, tags=self._tags(namespace))
            self._runs[namespace] = run.info.run_id
            logger.info("MLflow run '%s' (%s) opened", namespace, run.info.run_id)

    # trylast: after kedro-mlflow has opened the parent run.
    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        parent = mlflow.active_run()
        if parent is None:
            return  # tracking off for this pipeline
        # a step of a driver's run (attn-study) leaves its name and owner tags: the driver
        # owns it, and ends it
        driven = bool(os.environ.get(PARENT_STAYS_RUNNING))
        self._driven_parent = parent.info.run_id if driven else None
        tags = {} if driven else owner_tags()
        tags["runner"] = runner_name(str(run_params.get("runner")))
        name = self._resumed_name or parent_run_name(run_params)
        if self._resumed_name or (parent.info.run_name != name and not driven):
            tags["mlflow.runName"] = name
        mlflow.set_tags(tags)
        client = mlflow.MlflowClient()
        experiment = client.get_experiment(parent.info.experiment_id)
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            # the UI then opens the experiment on its runs, not on MLflow 3's GenAI overview
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        mark_orphaned_runs_killed(parent.info.experiment_id)
        self._install_signal_handlers()

    def _install_signal_handlers(self) -> None:
        """On SIGINT (Ctrl-C) or SIGTERM, stop as Python does on Ctrl-C and end the open
        runs as KILLED on the way out. Left alone, MLflow's exit handler would mark them
        FINISHED. Not in the handler itself: it may interrupt a write to the store, whose
        transaction must be rolled back (by the unwinding) before the store is used again."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def interrupted(signum: int, frame: Any) -> None:
            if self._interrupted:
                # once: a second signal (a Dask worker's SIGTERM after the one its death
                # sends, a second Ctrl-C) must not cut short the ending of the runs
                return
            logger.error("%s: the open MLflow runs end as KILLED", signal.strsignal(signum))
            self._activated.clear()
            self._interrupted = signum
            raise KeyboardInterrupt

        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.signal(signum, interrupted)

    def _end_runs_if_interrupted(self) -> None:
        """At exit after an interrupt: end the open runs KILLED, then exit as a shell reports
        a process the signal ended, 128 + its number (130 for Ctrl-C, 143 for SIGTERM), so
        that a scheduler tells an interrupt from a failure (click exits 1 on an interrupt).
        Python runs exit handlers last-registered first: this one, registered after
        MLflow's, runs before it, and it ends the process, so MLflow's cannot mark them
        FINISHED."""
        if not self._interrupted:
            return
        # a driver's run is the driver's to end: one stopped step (a cell whose worker was
        # killed, which Dask runs again elsewhere) does not end the study
        end_open_runs("KILLED", keep=self._driven_parent)
        self._keep_parent_running()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + self._interrupted)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    # trylast: after kedro-mlflow's, which ends the parent run
    @hook_impl(trylast=True)
    def after_pipeline_run(self) -> None:
        self._restore_signal_handlers()
        self._keep_parent_running()

    @hook_impl(trylast=True)
    def on_pipeline_error(self) -> None:
        self._restore_signal_handlers()
        self._keep_parent_running()

    def _keep_parent_running(self) -> None:
        if self._driven_parent is not None:
            mlflow.MlflowClient().update_run(self._driven_parent, status="RUNNING")
            self._driven_parent = None

    # trylast: kedro-mlflow re-activates its own run in before_node_run, which fails if a
    # nested run is already active, so this hook must come after it.
    @hook_impl(trylast=True)
    def before_node_run(self, node: Node) -> None:
        if node.namespace and mlflow.active_run() is not None:
            self._open(node.namespace)
            self._activated.add(node.name)

    @hook_impl(tryfirst=True)
    def after_node_run(self, node: Node) -> None:
        if node.name in self._activated:
            self._activated.discard(node.name)
            mlflow.end_run()

    @hook_impl(tryfirst=True)
    def on_node_error(self, node: Node) -> None:
        if node.name in self._activated:
            self._activated.discard(node.name)
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Node) -> None:
        if not node.namespace or node.namespace not in self._runs or self._catalog is None:
            return
        dataset = self._catalog.get(dataset_name)
        kind = (getattr(dataset, "metadata", None) or {}).get(METADATA_KEY)
        if kind is None:
            return
        if kind not in _KINDS:
            raise ValueError(
                f"catalog entry {dataset_name}: {METADATA_KEY} must be one of {_KINDS}"
            )
        namespace = node.namespace
        mlflow.start_run(run_id=self._runs[namespace], nested=True)
        try:
            self._log(namespace, kind, dataset, data)
        except BaseException:
            # not `with start_run()`, which ends the run FAILED on Ctrl-C as on an error
            mlflow.end_run("KILLED" if self._interrupted else "FAILED")
            raise
        mlflow.end_run()

    def _log(self, namespace: str, kind: str, dataset: Any, data: Any) -> None:
        """Log ``data`` (saved to ``dataset``) as ``kind`` to the namespace's run (active)."""
        if kind == "artifact":
            mlflow.log_artifact(str(dataset._filepath))  # noqa: SLF001
        elif kind == "metrics":
            mlflow.log_metrics({k: float(v) for k, v in data.items()})
            self._tag_version(namespace, data)
        elif kind == "params":
            mlflow.log_params(flatten(data))
            # The resolved config knows the variant and seed (a study overrides the seed);
            # the entry is the name in `variants` / `study.variants` (the namespace in a
            # default run), the variant its architecture.
            tags = {
                "entry": data.get("entry", namespace),
                "variant": data.get("model", {}).get("variant", namespace),
                "seed": data.get("train", {}).get("seed", ""),
                "precision": data.get("precision_used", "fp32"),
            }
            mlflow.set_tags(tags)
            self._entries[namespace] = {key: str(value) for key, value in tags.items()}
            self._register(namespace)
        elif kind == "tags":
            mlflow.set_tags({k: str(v) for k, v in data.items()})
            self._tag_version(namespace, data)
            self._update_champion(namespace)
        else:
            self._models[namespace] = (data, state_fingerprint(data.state_dict()))
            self._register(namespace)

    def _register(self, namespace: str) -> None:
        """Log the namespace's generator and register it once both it and its entry are known
        (the train node saves them in either order); the run is active. Weights registered
        before (a finished cell or run started again: nothing trained) keep their version,
        named in the run's tags, rather than get a copy."""
        both_known = namespace in self._models and namespace in self._entries
        if namespace in self._versions or not both_known:
            return
        entry = self._entries[namespace]
        dataset = str(self._params.get("dataset", ""))
        name = registry.registered_model_name(dataset, entry["entry"])
        sampler, weights = self._models.pop(namespace)
        version = registry.version_with_weights(name, weights)
        if version is None:
            uri = log_sampler_model(sampler).model_uri
            version = registry.register(
                uri,
                name,
                tags={**entry, registry.WEIGHTS_TAG: weights},
                description=registry.describe_model(dataset, entry["entry"], entry["variant"]),
            )
        else:
            logger.info("%s version %s has these weights already", name, version.version)
        mlflow.set_tag(REGISTERED_TAG, f"{version.name}/{version.version}")
        self._versions[namespace] = version

    def _tag_version(self, namespace: str, tags: dict[str, Any]) -> None:
        if namespace in self._versions:
            registry.tag_version(self._versions[namespace], tags)

    def _update_champion(self, namespace: str) -> None:
        if namespace not in self._versions:
            return  # evaluated without training in this run: no version to rank
        version = self._versions[namespace]
        metric = METRICS[self._registry.champion_metric]
        champion = registry.update_champion(
            version.name, f"test/{metric.name}", metric.higher_is_better, version.version
        )
        if champion is not None:
            logger.info("%s@%s is version %s", version.name, registry.CHAMPION, champion)
