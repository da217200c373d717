"""Each entry's MLflow run, and each study cell's: made once, ended once.

kedro-mlflow opens one run per ``kedro run`` (the parent) and keeps it active. Each pipeline
namespace (an entry) gets a child run, made with ``MlflowClient`` on its first node and
logged by its id: the active run never switches, so nothing is ended between nodes. A
child run ends FINISHED once the last of its nodes in this ``kedro run`` has saved what it
owns, KILLED on SIGINT or SIGTERM, FAILED on an error; runs a SIGKILLed process left
RUNNING are marked KILLED by the next ``kedro run``. ``attn-study`` makes its runs itself
and hands each ``kedro run`` the one to log into (:data:`GIVEN_RUN`), which that process
ends KILLED or FAILED if it stops early and otherwise leaves to ``attn-study`` to end.

What a run receives is the catalog's word: a dataset's metadata ``mlflow: artifact`` (the
saved file), ``metrics``, ``params`` (flattened), ``tags``, ``model`` (registered) or
``inputs`` (MLflow dataset inputs: ``{context: {name, digest}}``). A
namespaced dataset goes to its namespace's run, any other to the parent. Nodes know nothing
of MLflow but the per-epoch curves, logged while training runs (:func:`log_epoch_metrics`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
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
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from pydantic import BaseModel

from attn_pipeline.spec.config import RegistryConfig
from attn_pipeline.tracking import model_registry
from attn_pipeline.tracking.store import prepare_tracking_store, store_lock

# kedro-mlflow 2.0.3's KedroPipelineModel defines `predict` without type hints, and MLflow
# warns about it when the class is made (on every kedro command), under a filter of its own
# that no filter of ours overrides: the import's warnings are recorded and dropped
with warnings.catch_warnings(record=True):
    from kedro_mlflow.framework.hooks import MlflowHook

logger = logging.getLogger(__name__)

KINDS = ("artifact", "metrics", "params", "tags", "model", "inputs")
#: The run a driver (attn-study) hands a ``kedro run`` to log into, and ends itself.
GIVEN_RUN = "ATTN_PIPELINE_RUN_ID"
#: The process that logs into a run: a later run tells one a dead process left RUNNING.
PID_TAG, HOST_TAG = "attn_pipeline.pid", "attn_pipeline.host"
#: MLflow 3's experiment type: the UI opens a model-training experiment on its runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_node_run: ContextVar[str | None] = ContextVar("node_run", default=None)


def log_epoch_metrics(epoch: int, metrics: dict[str, float]) -> None:
    """Log one epoch's metrics to the run of the node under way, if it has one."""
    if (run_id := _node_run.get()) is not None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        mlflow.MlflowClient().log_batch(run_id, metrics=batch)


def owner_tags() -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def mark_orphaned_runs_killed(experiment_id: str) -> list[str]:
    """Mark KILLED this project's runs left RUNNING on this host by a process that is gone
    (SIGKILL, a crash); runs without owner tags, or whose process runs, are left alone."""
    client, host = mlflow.MlflowClient(), socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    ended = []
    for run in client.search_runs([experiment_id], query):
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
    match = re.fullmatch(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>", described)
    return "SequentialRunner" if described == "None" else match[1] if match else described


def dataset_input(context: str, named: dict[str, str]) -> DatasetInput:
    """One of a run's dataset inputs: ``named`` (its name and content hash) used for
    ``context`` (training, validation, test), as MLflow's runs table shows it."""
    dataset = Dataset(named["name"], named["digest"], source_type="local", source=named["name"])
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def entry_tags(run_params: dict[str, Any], namespace: str) -> dict[str, str]:
    """What an entry's ``params`` output says of it, as tags."""
    return {
        "entry": str(run_params.get("entry", namespace)),
        "variant": str(run_params.get("model", {}).get("variant", namespace)),
        "seed": str(run_params.get("train", {}).get("seed", "")),
        "precision": str(run_params.get("precision_used", "fp32")),
    }


class FlatParamsMlflowHook(MlflowHook):
    """kedro-mlflow's hook (in place of the plugin's, settings.py), handed the typed
    parameters as plain values, which it flattens (``train.epochs = 8``)."""

    @hook_impl
    def before_node_run(self, node: Node, catalog: Any, inputs: dict, is_async: bool) -> None:
        dump = {
            k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v
            for k, v in inputs.items()
        }
        super().before_node_run(node=node, catalog=catalog, inputs=dump, is_async=is_async)


class TrackingHook:
    """The runs of one ``kedro run`` below its parent: made, logged, registered, ended."""

    def __init__(self) -> None:
        self._parent: str | None = None  # where non-namespaced outputs go
        self._given: str | None = None  # a driver's run: ended here only if stopped early
        self._runs: dict[str, str] = {}  # namespace -> run id
        self._open: set[str] = set()  # runs made here and not yet ended
        self._remaining: Counter[str] = Counter()  # namespace -> its nodes still to run
        self._unsaved: dict[str, set[str]] = {}  # a namespace's last node -> outputs to save
        self._saved: dict[str, dict[str, Any]] = {}  # namespace -> model, entry, version
        self._handlers: dict[int, Any] = {}
        self._interrupted = 0
        # exit handlers run last-registered first: this one before MLflow's, which would end
        # the runs an interrupt left open FINISHED
        atexit.register(self._exit_if_interrupted)

    @hook_impl(tryfirst=True)  # the store is made under a lock before kedro-mlflow opens it
    def after_context_created(self, context) -> None:
        self._project = Path(context.project_path)
        self._uri = str(context.config_loader["mlflow"]["server"]["mlflow_tracking_uri"] or "")
        if self._uri:
            prepare_tracking_store(self._uri, self._project)
        params = context.config_loader["parameters"]  # the session's own loader's
        self._dataset = str(params.get("dataset", ""))
        self._champion = RegistryConfig.model_validate(params.get("registry", {})).champion_metric

    @hook_impl
    def after_catalog_created(self, catalog: CatalogProtocol) -> None:
        self._catalog = catalog

    @hook_impl(trylast=True)  # after kedro-mlflow has opened the parent run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline) -> None:
        self._runs, self._open, self._saved, self._unsaved = {}, set(), {}, {}
        self._remaining = Counter(node.namespace for node in pipeline.nodes if node.namespace)
        self._given = self._parent = os.environ.get(GIVEN_RUN) or None
        client = mlflow.MlflowClient()
        if self._given:  # a study cell's process: its namespace logs into the given run
            given = client.get_run(self._given).info
            self._experiment = given.experiment_id
            self._runs = dict.fromkeys(self._remaining, self._given)
            for key, value in owner_tags().items():
                client.set_tag(self._given, key, value)
            logger.info("MLflow run '%s' (%s) given", given.run_name, self._given)
        elif (parent := mlflow.active_run()) is not None:
            self._parent, self._experiment = parent.info.run_id, parent.info.experiment_id
            runner = runner_name(str(run_params.get("runner")))
            mlflow.set_tags(
                {**owner_tags(), "runner": runner, "mlflow.runName": parent_run_name(run_params)}
            )
            if EXPERIMENT_KIND[0] not in client.get_experiment(self._experiment).tags:
                client.set_experiment_tag(self._experiment, *EXPERIMENT_KIND)
            mark_orphaned_runs_killed(self._experiment)
        self._install_signal_handlers()

    def _run_of(self, namespace: str | None) -> str | None:
        """The run a node's outputs go to; a namespace's is made on its first node."""
        if self._parent is None or namespace is None or namespace in self._runs:
            return self._parent and self._runs.get(namespace, self._parent)
        tags = {
            "mlflow.parentRunId": self._parent,
            "namespace": namespace,
            "dataset": self._dataset,
        }
        with contextlib.suppress(OSError):  # no git here (a packaged project): no commit tag
            command = ["git", "rev-parse", "HEAD"]
            git = subprocess.run(command, cwd=self._project, capture_output=True, check=False)
            if git.returncode == 0:
                tags["mlflow.source.git.commit"] = git.stdout.decode().strip()
        run = mlflow.MlflowClient().create_run(
            self._experiment, run_name=namespace, tags=tags | owner_tags()
        )
        self._runs[namespace] = run.info.run_id
        self._open.add(run.info.run_id)
        logger.info("MLflow run '%s' (%s) opened", namespace, run.info.run_id)
        return run.info.run_id

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        _node_run.set(self._run_of(node.namespace) if node.namespace else None)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Node) -> None:
        kind = (getattr(self._catalog.get(dataset_name), "metadata", None) or {}).get("mlflow")
        run_id = self._run_of(node.namespace)
        if kind is not None and run_id is not None:
            self._log(kind, dataset_name, data, node.namespace, run_id)
        if node.namespace:
            self._saved_last(node, dataset_name)

    def _log(self, kind: str, dataset_name: str, data: Any, namespace: str | None, run_id: str):
        if kind not in KINDS:
            raise ValueError(f"catalog entry {dataset_name}: mlflow must be one of {KINDS}")
        client, now = mlflow.MlflowClient(), int(time.time() * 1000)
        if kind == "artifact":
            path = self._catalog.config_resolver.resolve_pattern(dataset_name)["filepath"]
            client.log_artifact(run_id, str(self._project / path))
        elif kind == "metrics":
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in data.items()])
        elif kind == "params":
            flat = pd.json_normalize(data, sep=".").iloc[0].to_dict()
            tags = [RunTag(k, v) for k, v in entry_tags(data, namespace).items()]
            client.log_batch(
                run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()], tags=tags
            )
        elif kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in data.items()])
        elif kind == "inputs":  # {context: {name, digest}}: the run's dataset inputs
            datasets = [dataset_input(c, d) for c, d in data.items()]
            # the parent's row of the runs table names them too (MLflow keeps one of each)
            for each in dict.fromkeys([run_id, self._parent]):
                if each is not None:
                    client.log_inputs(each, datasets=datasets)
        if namespace is not None:
            self._register(kind, namespace, self._saved.setdefault(namespace, {}), data, run_id)

    def _register(self, kind: str, namespace: str, saved: dict, data: Any, run_id: str) -> None:
        """Register a namespace's generator once it and its entry are saved (in either
        order); tag the version with the test figures; move ``champion`` once all are in."""
        if kind == "model":
            saved["model"] = data
        elif kind == "params":
            saved["entry"] = entry_tags(data, namespace)
        elif kind in ("metrics", "tags") and "version" in saved:
            model_registry.tag_version(saved["version"], data)
            if kind == "tags":  # the evaluation's description: its figures are all in
                model_registry.update_champion(saved["version"], self._champion)
        if "model" in saved and "entry" in saved:
            entry = saved["entry"]
            name = model_registry.registered_model_name(self._dataset, entry["entry"])
            description = model_registry.describe_model(
                self._dataset, entry["entry"], entry["variant"]
            )
            lock = partial(store_lock, self._uri, self._project)
            version = model_registry.register(
                saved.pop("model"), run_id, name, entry, description, lock
            )
            mlflow.MlflowClient().set_tag(
                run_id, model_registry.REGISTERED_TAG, f"{name}/{version.version}"
            )
            saved["version"] = version

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        """Kedro saves a node's outputs after this hook: a namespace's last node ends its
        run once they are all saved (:meth:`_saved_last`)."""
        _node_run.set(None)
        if node.namespace:
            self._remaining[node.namespace] -= 1
            if self._remaining[node.namespace] == 0:
                self._unsaved[node.name] = set(node.outputs)
                self._saved_last(node, None)

    def _saved_last(self, node: Node, dataset_name: str | None) -> None:
        unsaved = self._unsaved.get(node.name)
        if unsaved is None:
            return
        unsaved.discard(dataset_name)
        run_id = self._runs.get(node.namespace)
        if not unsaved and run_id in self._open:
            mlflow.MlflowClient().set_terminated(run_id, "FINISHED")
            self._open.discard(run_id)

    def end_runs(self, status: str) -> None:
        """End, ``status``, the runs this process has open: its namespaces' and a given run."""
        for run_id in sorted(self._open | ({self._given} if self._given else set())):
            mlflow.MlflowClient().set_terminated(run_id, status)
        self._open, self._given = set(), None

    @hook_impl
    def on_pipeline_error(self) -> None:
        self.end_runs("FAILED")
        self._restore_signal_handlers()

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._restore_signal_handlers()

    def _install_signal_handlers(self) -> None:
        """SIGINT or SIGTERM stop the run as Ctrl-C does, and its runs end KILLED on the way
        out: not in the handler, which may interrupt a write to the store whose transaction
        the unwinding rolls back first."""
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
        """At exit after a signal: the runs end KILLED, and the process exits 128 + the
        signal's number, as a shell reports a process a signal ended (click exits 1)."""
        if self._interrupted:
            self.end_runs("KILLED")
            while mlflow.active_run() is not None:
                mlflow.end_run("KILLED")
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + self._interrupted)
