"""Each entry's MLflow run, and each study cell's: opened once, ended once.

kedro-mlflow opens one run per ``kedro run`` (the parent) and keeps it active. Each
namespace of the pipeline (an entry) gets a child run, made with ``MlflowClient`` and logged
by its id, so the active run never switches and no run is ended between nodes: a
namespace's run ends FINISHED after the last of its nodes in this ``kedro run`` has saved
what it owns, KILLED on SIGINT or SIGTERM, FAILED on an error. Runs that a SIGKILLed
process left RUNNING are marked KILLED by the next ``kedro run``.

``attn-study`` owns its runs (the study's, each cell's) and starts each ``kedro run`` with
the run to log into (:data:`GIVEN_RUN`): such a process ends that run KILLED or FAILED if
it stops early, and otherwise leaves it RUNNING, for ``attn-study`` to end once the
process has exited and its outputs are on the tracking server.

Nodes know nothing of MLflow: what a run receives is a catalog dataset's metadata,
``mlflow: artifact`` (the saved file), ``metrics``, ``params`` (flattened), ``tags`` or
``model`` (registered). A namespaced dataset goes to its namespace's run, any other to the
parent. Per-epoch curves are logged while training runs (:func:`log_epoch_metrics`).
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
import time
from collections import Counter
from contextvars import ContextVar
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Node, Pipeline
from kedro_mlflow.framework.hooks import MlflowHook
from mlflow.entities import Metric, Param, RunTag
from pydantic import BaseModel

from attn_pipeline.config import RegistryConfig
from attn_pipeline.run_parameters import run_parameters
from attn_pipeline.tracking import registry
from attn_pipeline.tracking.store import prepare_tracking_store, store_lock

logger = logging.getLogger(__name__)

METADATA_KEY = "mlflow"
KINDS = ("artifact", "metrics", "params", "tags", "model")
#: The run a driver (attn-study) hands a ``kedro run`` to log into, and ends itself.
GIVEN_RUN = "ATTN_PIPELINE_RUN_ID"
#: The process owning a run: a later run tells one left RUNNING by a dead process.
PID_TAG, HOST_TAG = "attn_pipeline.pid", "attn_pipeline.host"
#: MLflow 3's experiment type: the UI opens a model-training experiment on its runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

#: The run of the node under way, for the curves it logs while it runs.
_node_run: ContextVar[str | None] = ContextVar("node_run", default=None)


def log_epoch_metrics(epoch: int, metrics: dict[str, float]) -> None:
    """Log one epoch's metrics to the run of the node under way, if it has one."""
    run_id = _node_run.get()
    if run_id is not None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        mlflow.MlflowClient().log_batch(run_id, metrics=batch)


def owner_tags() -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def mark_orphaned_runs_killed(experiment_id: str) -> list[str]:
    """Mark KILLED this project's runs left RUNNING on this host by a process that is gone
    (SIGKILL, a crash); runs without the owner tags, or whose process runs, are left."""
    client = mlflow.MlflowClient()
    running = client.search_runs(
        [experiment_id],
        f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'",
    )
    ended = []
    for run in running:
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    if ended:
        logger.warning("marked %d run(s) KILLED, left RUNNING by a killed process", len(ended))
    return ended


def parent_run_name(run_params: dict[str, Any]) -> str:
    """What ran: ``default`` for a bare ``kedro run``, else the pipelines (``data_prep+
    train``) or the tags (``kedro run --tags evaluate``: ``evaluate``)."""
    named = [n for n in run_params.get("pipeline_names") or () if n != "__default__"]
    return "+".join(named or run_params.get("tags") or ()) or "default"


def runner_name(described: str) -> str:
    """The runner's class from Kedro's record of it (an object's repr, or ``None``)."""
    if described == "None":
        return "SequentialRunner"
    match = re.fullmatch(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>", described)
    return match.group(1) if match else described


def entry_tags(run_params: dict[str, Any], namespace: str) -> dict[str, str]:
    """What a run's ``params`` output says of it, as tags: ``entry``, ``variant``, ``seed``
    and ``precision``."""
    return {
        "entry": str(run_params.get("entry", namespace)),
        "variant": str(run_params.get("model", {}).get("variant", namespace)),
        "seed": str(run_params.get("train", {}).get("seed", "")),
        "precision": str(run_params.get("precision_used", "fp32")),
    }


def flat(params: dict[str, Any]) -> dict[str, Any]:
    """``{"model": {"latent_dim": 20}} -> {"model.latent_dim": 20}``."""
    return pd.json_normalize(params, sep=".").iloc[0].to_dict() if params else {}


def _git_commit(path: Path) -> str | None:
    out = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=False
    )
    return out.stdout.strip() if out.returncode == 0 else None


class FlatParamsMlflowHook(MlflowHook):
    """kedro-mlflow's hook (settings.py registers it in place of the plugin's), handed the
    typed parameters as plain values, which it flattens (``train.epochs = 8``)."""

    @hook_impl
    def before_node_run(self, node: Node, catalog: CatalogProtocol, inputs: dict, is_async: bool):
        plain = {
            k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v
            for k, v in inputs.items()
        }
        super().before_node_run(node=node, catalog=catalog, inputs=plain, is_async=is_async)


class TrackingHook:
    """The runs of one ``kedro run``: its namespaces', what the catalog logs to them, the
    registry, and how they end (see the module)."""

    def __init__(self) -> None:
        self._catalog: CatalogProtocol | None = None
        self._parent: str | None = None  # where non-namespaced outputs go
        self._given: str | None = None  # a driver's run, ended here only if stopped early
        self._runs: dict[str, str] = {}  # namespace -> run id
        self._open: set[str] = set()  # runs made here and not yet ended
        self._remaining: Counter[str] = Counter()  # namespace -> nodes still to run
        self._models: dict[str, Any] = {}  # namespace -> generator, until its entry is known
        self._entries: dict[str, dict[str, str]] = {}  # namespace -> entry tags
        self._versions: dict[str, Any] = {}  # namespace -> registered version
        self._handlers: dict[int, Any] = {}
        self._interrupted = 0
        # before MLflow's exit handler (registered at its import), which would end the runs
        # an interrupt left open FINISHED: exit handlers run last-registered first
        atexit.register(self._exit_if_interrupted)

    # tryfirst: the store is created under a lock before kedro-mlflow opens it
    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        self._project = Path(context.project_path)
        self._uri = str(context.config_loader["mlflow"]["server"]["mlflow_tracking_uri"] or "")
        if self._uri:
            prepare_tracking_store(self._uri, self._project)
        params = run_parameters()
        self._dataset = str(params.get("dataset", ""))
        self._registry = RegistryConfig.model_validate(params.get("registry", {}))

    @hook_impl
    def after_catalog_created(self, catalog: CatalogProtocol) -> None:
        self._catalog = catalog

    # trylast: after kedro-mlflow has opened the parent run
    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline) -> None:
        self._runs.clear()
        self._open.clear()
        self._remaining = Counter(node.namespace for node in pipeline.nodes if node.namespace)
        self._given = self._parent = os.environ.get(GIVEN_RUN) or None
        client = mlflow.MlflowClient()
        if self._given:  # a study cell's process: its namespace logs into the given run
            given = client.get_run(self._given).info
            self._experiment = given.experiment_id
            self._runs = dict.fromkeys(self._remaining, self._given)
            for key, value in owner_tags().items():  # the process that logs into it owns it
                client.set_tag(self._given, key, value)
            logger.info("MLflow run '%s' (%s) given", given.run_name, self._given)
        elif (parent := mlflow.active_run()) is not None:
            self._parent, self._experiment = parent.info.run_id, parent.info.experiment_id
            runner = runner_name(str(run_params.get("runner")))
            name = parent_run_name(run_params)
            mlflow.set_tags({**owner_tags(), "runner": runner, "mlflow.runName": name})
            if EXPERIMENT_KIND[0] not in client.get_experiment(self._experiment).tags:
                client.set_experiment_tag(self._experiment, *EXPERIMENT_KIND)
            mark_orphaned_runs_killed(self._experiment)
        self._install_signal_handlers()

    def _run_of(self, namespace: str | None) -> str | None:
        """The run a node's outputs go to, made on the namespace's first node."""
        if self._parent is None or namespace is None or namespace in self._runs:
            return self._parent and self._runs.get(namespace, self._parent)
        tags = {"mlflow.parentRunId": self._parent, "namespace": namespace}
        tags |= {"dataset": self._dataset, **owner_tags()}
        if commit := _git_commit(self._project):
            tags["mlflow.source.git.commit"] = commit
        run = mlflow.MlflowClient().create_run(self._experiment, run_name=namespace, tags=tags)
        self._runs[namespace] = run.info.run_id
        self._open.add(run.info.run_id)
        logger.info("MLflow run '%s' (%s) opened", namespace, run.info.run_id)
        return run.info.run_id

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        _node_run.set(self._run_of(node.namespace) if node.namespace else None)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Node) -> None:
        kind = (getattr(self._catalog.get(dataset_name), "metadata", None) or {}).get(METADATA_KEY)
        run_id = self._run_of(node.namespace)
        if kind is None or run_id is None:
            return
        if kind not in KINDS:
            raise ValueError(f"catalog entry {dataset_name}: {METADATA_KEY} must be one of {KINDS}")
        client, now = mlflow.MlflowClient(), int(time.time() * 1000)
        if kind == "artifact":
            path = self._catalog.config_resolver.resolve_pattern(dataset_name)["filepath"]
            client.log_artifact(run_id, str(self._project / path))
        elif kind == "metrics":
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in data.items()])
        elif kind == "params":
            params = [Param(k, str(v)[:6000]) for k, v in flat(data).items()]
            tags = [RunTag(k, v) for k, v in entry_tags(data, node.namespace).items()]
            client.log_batch(run_id, params=params, tags=tags)
        elif kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in data.items()])
        self._register(kind, node.namespace, data, run_id)

    def _register(self, kind: str, namespace: str | None, data: Any, run_id: str) -> None:
        """Register a namespace's generator once it and its entry are saved (in either
        order); tag the version with the test figures; move ``champion`` once all are in."""
        if namespace is None:
            return
        if kind == "model":
            self._models[namespace] = data
        elif kind == "params":
            self._entries[namespace] = entry_tags(data, namespace)
        elif kind in ("metrics", "tags") and namespace in self._versions:
            registry.tag_version(self._versions[namespace], data)
            if kind == "tags":  # the evaluation's description: the figures are all in
                registry.update_champion(self._versions[namespace], self._registry.champion_metric)
        if namespace in self._models and namespace in self._entries:
            entry = self._entries[namespace]
            version = registry.register(
                self._models.pop(namespace),
                run_id,
                registry.registered_model_name(self._dataset, entry["entry"]),
                entry,
                registry.describe_model(self._dataset, entry["entry"], entry["variant"]),
                partial(store_lock, self._uri, self._project),
            )
            mlflow.MlflowClient().set_tag(
                run_id, registry.REGISTERED_TAG, f"{version.name}/{version.version}"
            )
            self._versions[namespace] = version

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        _node_run.set(None)
        if node.namespace:
            self._remaining[node.namespace] -= 1
            run_id = self._runs.get(node.namespace)
            if self._remaining[node.namespace] == 0 and run_id in self._open:
                mlflow.MlflowClient().set_terminated(run_id, "FINISHED")
                self._open.discard(run_id)

    def end_runs(self, status: str) -> None:
        """End the runs this process has open, its namespaces' and a given run, ``status``
        (KILLED or FAILED; the parent is kedro-mlflow's)."""
        client = mlflow.MlflowClient()
        for run_id in sorted(self._open | ({self._given} if self._given else set())):
            client.set_terminated(run_id, status)
        self._open.clear()
        self._given = None

    @hook_impl
    def on_pipeline_error(self) -> None:
        self.end_runs("FAILED")
        self._restore_signal_handlers()

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._restore_signal_handlers()

    def _install_signal_handlers(self) -> None:
        """SIGINT or SIGTERM stop the run as Ctrl-C does; its runs end KILLED on the way out
        (not in the handler: it may interrupt a write to the store, whose transaction the
        unwinding rolls back first)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupted(signum: int, frame: Any) -> None:
            if self._interrupted:  # a second signal must not cut the ending of the runs short
                return
            logger.error("%s: the open MLflow runs end as KILLED", signal.strsignal(signum))
            self._interrupted = signum
            raise KeyboardInterrupt

        for signum in (signal.SIGINT, signal.SIGTERM):
            self._handlers[signum] = signal.signal(signum, interrupted)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()

    def _exit_if_interrupted(self) -> None:
        """At exit after a signal: end the runs KILLED, then exit 128 + the signal's number,
        as a shell reports a process a signal ended (click would exit 1), before MLflow's
        own exit handler can mark them FINISHED."""
        if not self._interrupted:
            return
        self.end_runs("KILLED")
        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + self._interrupted)
