"""Honest MLflow run states: a `kedro run` interrupted (SIGINT, SIGTERM) between two nodes
or while a model is logged ends its runs KILLED, never FINISHED (runs left RUNNING by a
SIGKILLed process: tests/training/test_resume.py). Real `kedro run` processes on tiny data,
a real SQLite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import project_copy
from tests.runs.test_run_truth import PAUSE_BETWEEN_NODES

pytestmark = pytest.mark.process

KEDRO = str(Path(sys.executable).with_name("kedro"))
LONG_TRAINING = "data_prep.val_size=20,train.epochs=500,train.batch_size=50"
QUICK = "data_prep.val_size=20,train.epochs=1,train.batch_size=50,evaluate.n_samples=20"
QUICK += ",evaluate.nll_images=10,evaluate.nll_samples=2,evaluate.kid_subset_size=10"


def _start(
    project: Path, uri: str, params: str, pipelines: str = "data_prep,train", **env: str
) -> subprocess.Popen:
    def restore_sigint() -> None:  # a background child of a non-interactive shell ignores it
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(
        [KEDRO, "run", "--pipelines", pipelines, "--params", params],
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "MLFLOW_TRACKING_URI": uri, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=restore_sigint,  # noqa: PLW1509 (no threads in the test process use it)
    )


def _runs(uri: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _wait_for_training(uri: str, process: subprocess.Popen, timeout: float = 240) -> None:
    """Until a variant's run has logged an epoch (training is under way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()[0][-3000:]
        try:
            if any("train/loss" in r.data.metrics for r in _runs(uri)):
                return
        except Exception:  # noqa: BLE001 (the store may not exist yet)
            pass
        time.sleep(0.5)
    process.kill()
    pytest.fail("training never started")


def _start_slowed(
    tmp_path: Path,
    project: Path,
    uri: str,
    params: str,
    hook: str,
    flag: str,
    pipelines: str = "data_prep,train",
    **env: str,
) -> tuple[subprocess.Popen, Path]:
    """`kedro run` whose interpreter first imports ``hook`` (as sitecustomize), which
    slows a step and touches the file named by the variable ``flag`` when it begins."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(hook)
    begun = tmp_path / flag.lower()
    env |= {"PYTHONPATH": str(hooks), flag: str(begun)}
    process = _start(project, uri, params, pipelines, **env)
    return process, begun


def _wait_for(flag: Path, process: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not flag.exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, f"{what} never began"
        time.sleep(0.05)


def _paused_after_training(tmp_path: Path, project: Path, uri: str) -> subprocess.Popen:
    """The default `kedro run`, paused after `none` has trained and before it is evaluated."""
    process, paused = _start_slowed(
        tmp_path,
        project,
        uri,
        QUICK,
        PAUSE_BETWEEN_NODES,
        "PAUSED",
        pipelines="__default__",
        PAUSE_BEFORE="evaluate_none",
    )
    _wait_for(paused, process, "the pause after training")
    return process


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_run_interrupted_between_two_nodes_ends_killed(tmp_path: Path, signum: int) -> None:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    process = _paused_after_training(tmp_path, project_copy(tmp_path / "project"), uri)
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0]
    # as a shell reports a process the signal ended: a scheduler tells it from a failure
    assert process.returncode == 128 + signum, output[-3000:]
    runs = _runs(uri)
    assert runs and {r.info.status for r in runs} == {"KILLED"}, output[-3000:]
    assert "none" in {r.info.run_name for r in runs}  # trained, not evaluated: not FINISHED
    assert any("mlflow.parentRunId" not in r.data.tags for r in runs)


#: Imported first by the run's interpreter: logging a trained model waits a minute, after
#: leaving a file that says it has begun, so that a signal lands inside it.
SLOW_MODEL_LOGGING = """
import os, pathlib, time
import attn_pipeline.tracking.model_registry as registry
_log_sampler_model = registry.log_sampler_model
def _slow(*args):
    pathlib.Path(os.environ["MODEL_LOGGING_BEGUN"]).touch()
    time.sleep(60)
    return _log_sampler_model(*args)
registry.log_sampler_model = _slow
"""


def test_an_interrupt_while_the_model_is_logged_ends_every_run_killed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    project = project_copy(tmp_path / "project")
    quick = "data_prep.val_size=20,train.epochs=1,train.batch_size=50"
    process, begun = _start_slowed(
        tmp_path, project, uri, quick, SLOW_MODEL_LOGGING, "MODEL_LOGGING_BEGUN"
    )
    _wait_for(begun, process, "model logging")
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output[-3000:]
    runs = _runs(uri)
    assert runs and {r.info.status for r in runs} == {"KILLED"}, [
        (r.info.run_name, r.info.status) for r in runs
    ]


#: Imported first by the run's interpreter: ending a run KILLED takes three seconds, after
#: leaving a file that says the ending has begun, so that a second signal lands inside it.
SLOW_KILLED_ENDING = """
import os, pathlib, time
import mlflow
_set_terminated = mlflow.MlflowClient.set_terminated
def _slow(self, run_id, status=None, end_time=None):
    if status == "KILLED":
        pathlib.Path(os.environ["ENDING_BEGUN"]).touch()
        time.sleep(3)
    return _set_terminated(self, run_id, status, end_time)
mlflow.MlflowClient.set_terminated = _slow
"""


def test_a_second_signal_does_not_cut_short_the_ending_of_a_given_run(tmp_path: Path) -> None:
    """A `kedro run` logging into a run a driver gave it (a study cell) gets SIGTERM twice,
    as a cell does when its Dask worker dies (the death signal, then the worker's own), the
    second while the runs are being ended: the given run ends KILLED all the same."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    project = project_copy(tmp_path / "project")
    client = mlflow.MlflowClient(uri)
    given = client.create_run(client.create_experiment("attn_pipeline_mnist")).info.run_id
    process, begun = _start_slowed(
        tmp_path,
        project,
        uri,
        LONG_TRAINING,
        SLOW_KILLED_ENDING,
        "ENDING_BEGUN",
        ATTN_PIPELINE_RUN_ID=given,
    )
    _wait_for_training(uri, process)
    process.send_signal(signal.SIGTERM)
    _wait_for(begun, process, "the ending of the runs", timeout=60)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    status = {r.info.run_id: r.info.status for r in _runs(uri)}
    assert status.pop(given) == "KILLED"
    assert set(status.values()) == {"KILLED"}, output[-3000:]  # kedro-mlflow's own run
