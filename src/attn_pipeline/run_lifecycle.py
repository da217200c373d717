"""How a ``kedro run``'s MLflow runs begin and end, whatever ends them.

:class:`RunLifecycleHook` prepares the tracking store before kedro-mlflow opens it, names
and tags the parent run, marks KILLED the runs a killed process left RUNNING, and turns
SIGINT / SIGTERM into runs that end KILLED (not FINISHED, as MLflow's exit handler would
leave them) and an exit status of 128 + the signal's number. A driver that runs one parent
run in several ``kedro run`` steps (``attn-study``) keeps its parent RUNNING between them.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

from attn_pipeline.run_guard import prepare_tracking_store

logger = logging.getLogger(__name__)

#: Tags that say which process owns a run, so that a later run can tell a run left RUNNING
#: by a killed process from one that is still going.
PID_TAG, HOST_TAG = "attn_pipeline.pid", "attn_pipeline.host"

#: Set by a driver that runs one parent run in several `kedro run` steps (attn-study): the
#: step leaves the parent RUNNING when it ends (kedro-mlflow ends it), since the parent is
#: finished only once the driver's last step is; the driver ends it.
PARENT_STAYS_RUNNING = "ATTN_PIPELINE_PARENT_STAYS_RUNNING"

#: The name Kedro gives the pipeline `kedro run` runs without --pipelines.
DEFAULT_PIPELINE = "__default__"
#: MLflow 3's experiment type, which decides the page its UI opens an experiment on.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


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


class RunLifecycleHook:
    """The parent run's name and tags, orphaned runs, and interrupts (see the module)."""

    def __init__(self) -> None:
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
        try:
            uri = context.config_loader["mlflow"]["server"]["mlflow_tracking_uri"]
        except (KeyError, TypeError, MissingConfigException):
            uri = None
        if uri:
            prepare_tracking_store(str(uri), Path(context.project_path))
        # a run resumed by id (MLFLOW_RUN_ID: a driver's, or the user's) keeps its name,
        # which kedro-mlflow would replace by this run's pipeline names
        resumed = os.environ.get("MLFLOW_RUN_ID")
        self._resumed_name = (
            mlflow.MlflowClient(str(uri) if uri else None).get_run(resumed).info.run_name
            if resumed
            else None
        )

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
