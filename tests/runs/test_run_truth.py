"""A run reads FINISHED only when everything it owns is saved: a `kedro run` interrupted
between any two nodes (in process), a study that reuses only complete cells, and a study
SIGKILLed between the nodes of a cell, then run again (real processes)."""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from kedro.framework.project import settings
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from attn_pipeline.spec.cells import CELL_KEY_TAG
from attn_pipeline.study.runner import complete_cells
from attn_pipeline.study.tracked_cells import SUMMARY_ARTIFACT
from attn_pipeline.tracking import runs
from attn_pipeline.tracking.model_registry import REGISTERED_TAG
from tests.conftest import TINY_RUN, project_copy
from tests.study.test_study_processes import ENV, _cell_processes, _tiny_project

#: What an entry's run holds once all of its nodes have run.
COMPLETE_ARTIFACTS = {"samples.png", "reconstructions.png", "training_history.csv"}

#: Imported first by a process's interpreter (as sitecustomize): before the node named by
#: PAUSE_BEFORE (all the earlier nodes' outputs saved), leave the file PAUSED and wait, so
#: that a signal lands between two nodes.
PAUSE_BETWEEN_NODES = """
import functools, os, pathlib, time
from attn_pipeline.tracking import runs
_before = runs.TrackingHook.before_node_run
@functools.wraps(_before)
def _paused(self, node):
    flag = pathlib.Path(os.environ["PAUSED"])
    if node.name.endswith(os.environ["PAUSE_BEFORE"]) and not flag.exists():
        flag.touch()
        time.sleep(300)
    _before(self, node)
runs.TrackingHook.before_node_run = _paused
"""


def _complete(client: mlflow.MlflowClient, run: mlflow.entities.Run) -> bool:
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    has_figures = "test/nll_iw" in run.data.metrics and REGISTERED_TAG in run.data.tags
    return has_figures and COMPLETE_ARTIFACTS <= artifacts


def _entry_runs(uri: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    found = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in found if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.pipeline
def test_a_run_interrupted_between_any_two_nodes_is_finished_only_where_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C before each node in turn of a one-entry `kedro run`, once the earlier nodes'
    outputs are saved (in process, from the hook): at that moment no entry run reads
    FINISHED unless it holds all it owns, and once the runs are ended as an interrupt
    ends them, each is FINISHED exactly when complete, else KILLED. The reruns resume the
    saved epochs and evaluations."""
    project = project_copy(tmp_path / "project")
    (project / "conf/local/parameters.yml").write_text("entries: [none]\n")
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    bootstrap_project(project)
    client = mlflow.MlflowClient(uri)
    tracking = next(h for h in settings.HOOKS if isinstance(h, runs.TrackingHook))
    original = runs.TrackingHook.before_node_run
    seen: list[str] = []

    def run_interrupted_after(count: int) -> bool:
        """Whether the run was interrupted (False: it had fewer nodes and finished)."""
        done = []

        @functools.wraps(original)
        def interrupting(self, node):
            if len(done) == count:
                for run in _entry_runs(uri):
                    if run.info.status == "FINISHED":
                        assert _complete(client, run), (count, node.name, run.info.run_name)
                raise KeyboardInterrupt
            done.append(node.name)
            original(self, node)

        monkeypatch.setattr(runs.TrackingHook, "before_node_run", interrupting)
        try:
            with KedroSession.create(project_path=project, runtime_params=TINY_RUN) as session:
                session.run()
        except KeyboardInterrupt:
            seen.append(done[-1])
            tracking.end_runs("KILLED")  # as the exit handler after a signal
            tracking._restore_signal_handlers()  # noqa: SLF001 (pytest's own handlers back)
            while mlflow.active_run() is not None:
                mlflow.end_run("KILLED")
            return True
        return False

    count = 1
    while run_interrupted_after(count):
        for run in _entry_runs(uri):
            expected = "FINISHED" if _complete(client, run) else "KILLED"
            assert run.info.status == expected, (count, seen[-1], run.info.run_name)
        count += 1
    # every boundary of the entry's nodes was crossed, and its last run completed
    assert {"train_none", "evaluate_none"} <= {name.rsplit(".", 1)[-1] for name in seen}
    statuses = [r.info.status for r in _entry_runs(uri)]
    assert statuses.count("FINISHED") >= 1 and set(statuses) <= {"FINISHED", "KILLED"}


def test_a_study_reuses_only_complete_cells(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A FINISHED cell run without its summary or hashes (an older design, a store edited
    by hand) is not reused, and the log says what it lacks; a complete one is."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("attn_pipeline_mnist")
    hashes = {"data_hash": "d", "feature_extractor_hash": "f"}

    def cell_run(key: str, tags: dict, summary: bool) -> str:
        run_id = client.create_run(experiment, tags={CELL_KEY_TAG: key, **tags}).info.run_id
        if summary:
            client.log_dict(run_id, {"entry": "none"}, SUMMARY_ARTIFACT)
        client.set_terminated(run_id, "FINISHED")
        return run_id

    cell_run("a", hashes, summary=False)
    cell_run("b", {}, summary=True)
    complete = cell_run("c", hashes, summary=True)
    with caplog.at_level(logging.WARNING, logger="attn_pipeline.study"):
        found = complete_cells(client, experiment, {"x.a": "a", "x.b": "b", "x.c": "c"})
    assert found == {"x.c": complete}
    assert f"lacks {SUMMARY_ARTIFACT}" in caplog.text
    assert "lacks data_hash, feature_extractor_hash" in caplog.text


@pytest.mark.process
def test_a_study_killed_between_the_nodes_of_a_cell_finishes_when_run_again(
    tmp_path: Path,
) -> None:
    """`attn-study` SIGKILLed while a cell has trained and not yet evaluated: its Dask
    worker goes with it and stops the cell (a cell's process asks for SIGTERM when its
    worker dies), whose run ends KILLED, never FINISHED; the same command again runs the
    cell and completes the study (of one cell: the baseline's)."""
    project = _tiny_project(tmp_path)
    conf = project / "conf" / "local" / "parameters.yml"
    tiny = yaml.safe_load(conf.read_text())
    conf.write_text(yaml.safe_dump({**tiny, "study": {**tiny["study"], "entries": ["none"]}}))
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(PAUSE_BETWEEN_NODES)
    paused = tmp_path / "paused"
    env = {**ENV, "MLFLOW_TRACKING_URI": uri, "PAUSE_BEFORE": "evaluate_none_seed0"}
    env |= {"PAUSED": str(paused), "PYTHONPATH": str(hooks)}
    command = [str(Path(sys.executable).with_name("attn-study")), "--dashboard", "none"]
    study = subprocess.Popen(command, cwd=project, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not paused.exists():
        assert study.poll() is None and time.monotonic() < deadline, "the cell never trained"
        time.sleep(0.1)
    study.kill()
    study.wait(timeout=60)
    deadline = time.monotonic() + 120
    while _cell_processes(project):  # the cell goes with its worker (SIGTERM on its death)
        assert time.monotonic() < deadline, "the cell's process outlived the study"
        time.sleep(0.2)
    (cell,) = [r for r in _entry_runs(uri) if r.info.run_name == "study.none_seed0"]
    assert cell.info.status == "KILLED"
    # the study's own run is never FINISHED without a comparison: RUNNING until the next
    # run against the store marks it KILLED (it names the killed process as its owner)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist").experiment_id
    (killed,) = client.search_runs([experiment], "attributes.run_name = 'study'")
    assert killed.info.status == "RUNNING"
    assert not (project / "data/08_reporting/mnist/study/comparison.csv").exists()
    shutil.rmtree(hooks)
    again = subprocess.run(
        command,
        cwd=project,
        env={**ENV, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 cell, 0 finished before (reused), 1 to run" in again.stderr
    assert (project / "data/08_reporting/mnist/study/comparison.csv").is_file()
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    finished = [r for r in _entry_runs(uri) if r.info.status == "FINISHED"]
    assert [r.info.run_name for r in finished] == ["study.none_seed0"]
    assert "Downloading artifacts" not in again.stderr  # MLflow's bars: a terminal's only
