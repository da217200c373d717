"""`attn-study`'s bookkeeping in process: its worker plan and command line, its checks, its
runs' states, reuse and what it says, with Dask's scheduler and a real SQLite store, each
cell's `kedro run` replaced by a stand-in that logs what a cell logs. The real processes,
signals and machines are tests/study/test_study_processes.py's."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
from pathlib import Path

import mlflow
import pytest
import yaml
from distributed import LocalCluster

from attn_pipeline.data.folder_lock import ProjectBusyError, ProjectRunLock, output_groups
from attn_pipeline.spec.cells import CELL_KEY_TAG, study_cells
from attn_pipeline.spec.config import StudyConfig
from attn_pipeline.study import runner
from attn_pipeline.study.runner import parse_entries, parse_seeds, plan_workers
from attn_pipeline.study.tracked_cells import SUMMARY_ARTIFACT
from attn_pipeline.tracking.runs import GIVEN_RUN
from tests.conftest import project_copy

STUDY = {"entries": ["none", "spatial_gate"], "seeds": [0], "baselines": ["none"], "workers": 2}


class FakeCells:
    """Stands in for :func:`runner.kedro_run`: what a cell's, the shared step's and the
    comparison's processes leave on the store, with the exit codes given."""

    def __init__(self, uri: str) -> None:
        self.client = mlflow.MlflowClient(uri)
        self.failing: set[str] = set()  # namespaces (or "shared") whose process exits 1
        self.started: list[str] = []

    def __call__(self, project: Path, args: list[str], env: dict, params: dict, log=None) -> int:
        what = args[args.index("--namespaces") + 1] if "--namespaces" in args else None
        what = what or ("shared" if "--nodes" in args else "report")
        self.started.append(what)
        if log is not None:
            with open(log, "a") as out:
                out.write(f"==== kedro run {' '.join(args)}\n")
                if what in self.failing:
                    out.write("run `attn-fetch-data mnist` first\n")
        if what in self.failing:
            return 1
        run_id = env.get(GIVEN_RUN)
        if what == "report":
            self.client.log_dict(run_id, {"entry": ["none"]}, "comparison.csv")
        elif what != "shared":
            self.client.log_dict(run_id, {"entry": what}, SUMMARY_ARTIFACT)
            self.client.set_tag(run_id, "data_hash", "d")
            self.client.set_tag(run_id, "feature_extractor_hash", "f")
        return 0


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(project, store URI, the stand-in): a project folder whose study is STUDY, its cells
    run on Dask threads of this process."""
    project = project_copy(tmp_path / "project")
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump({"study": STUDY}))
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    fake = FakeCells(uri)
    monkeypatch.setattr(runner, "kedro_run", fake)
    monkeypatch.setattr(runner, "LocalCluster", lambda **kw: LocalCluster(processes=False, **kw))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield project, uri, fake
    for each, handler in handlers.items():  # runner.main sets its own
        signal.signal(each, handler)


def _runs(uri: str, filter_string: str = "") -> list:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    if experiment is None:
        return []
    return client.search_runs(
        [experiment.experiment_id], filter_string, order_by=["attributes.start_time ASC"]
    )


def _main(*args: str) -> int:
    return runner.main(["--dashboard", "none", *args])


@pytest.mark.pipeline
def test_bad_entries_stop_the_study_before_anything_runs(study, caplog) -> None:
    project, uri, fake = study
    with caplog.at_level(logging.ERROR, logger="attn_pipeline.study"):
        assert _main("--entries", "none,nonesuch") == 2
        assert _main("--entries", "spatial_gate") == 2
    assert "entries ['nonesuch'] have no '<name>.model' block" in caplog.text
    assert "has none of the study's baselines ['none']" in caplog.text
    with pytest.raises(SystemExit) as exit_code:
        _main("--seeds", "3-1")
    assert exit_code.value.code == 2
    assert fake.started == [] and not _runs(uri)  # no process, no run


@pytest.mark.pipeline
def test_a_failed_cell_fails_the_study_and_a_rerun_finishes_it(study, caplog) -> None:
    """One cell fails: the study names it and its log, makes no comparison and ends its run
    FAILED; the other finishes. Again, with the cell fixed: the finished cell is found by its
    key and not run again, and the study completes."""
    project, uri, fake = study
    fake.failing = {"study.spatial_gate_seed0"}
    with caplog.at_level(logging.INFO, logger="attn_pipeline.study"):
        assert _main() == 1
    logs = project / "data/08_reporting/mnist/study/logs"
    assert "1 cell(s) failed: study.spatial_gate_seed0" in caplog.text
    assert f"its log: {logs / 'study.spatial_gate_seed0.log'}" in caplog.text
    assert "report" not in fake.started
    (failed,) = _runs(uri, "attributes.run_name = 'study'")
    assert failed.info.status == "FAILED"
    cells = {r.info.run_name: r for r in _runs(uri, "attributes.run_name LIKE 'study.%'")}
    assert cells["study.spatial_gate_seed0"].info.status == "FAILED"
    assert cells["study.none_seed0"].info.status == "FINISHED"
    assert cells["study.none_seed0"].data.tags[CELL_KEY_TAG]

    fake.failing, fake.started = set(), []
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="attn_pipeline.study"):
        assert _main() == 0
    assert "2 cells, 1 finished before (reused), 1 to run" in caplog.text
    assert "study.none_seed0" not in fake.started and "report" in fake.started
    parents = _runs(uri, "attributes.run_name = 'study'")
    assert [r.info.status for r in parents] == ["FAILED", "FINISHED"]
    reused = cells["study.none_seed0"].info.run_id
    assert parents[1].data.tags["attn_pipeline.reused_cell.study.none_seed0"] == reused

    fake.started = []  # every cell finished: nothing is started but the comparison
    assert _main() == 0 and fake.started == ["report"]


@pytest.mark.pipeline
def test_a_failing_shared_step_starts_no_other_cell(study, caplog) -> None:
    """The shared step fails (raw data missing): tried once, no other cell is started, and
    the study names the host and the shared step's log."""
    project, uri, fake = study
    fake.failing = {"shared"}
    with caplog.at_level(logging.INFO, logger="attn_pipeline.study"):
        assert _main("--workers", "1", "--seeds", "0-2") == 1
    shared_log = project / "data/08_reporting/mnist/study/logs/shared.log"
    assert f"failed on {socket.gethostname()}, so no other cell is started" in caplog.text
    assert f"fix what its log says ({shared_log})" in caplog.text
    assert caplog.text.count("not started (the shared step failed)") == 5  # of 6 cells
    assert fake.started == ["shared"]  # once, not once per cell
    (parent,) = _runs(uri, "attributes.run_name = 'study'")
    assert parent.info.status == "FAILED"


def test_cells_run_seed_by_seed() -> None:
    """Every entry of a seed is queued before the next seed: a study stopped part way
    leaves whole seeds for the paired comparison."""
    study = StudyConfig(entries=["none", "latent"], seeds=[3, 1], baselines=["none"])
    assert [namespace for _, _, namespace in study_cells(study.entries, study.seeds)] == [
        "study.none_seed3",
        "study.latent_seed3",
        "study.none_seed1",
        "study.latent_seed1",
    ]


def test_worker_plan() -> None:
    assert plan_workers("auto", n_cells=35, cpu_count=2) == (2, 1)
    assert plan_workers("auto", n_cells=35, cpu_count=16, gpus=1) == (8, 2)
    assert plan_workers("auto", n_cells=3, cpu_count=8) == (3, 2)  # no more than the cells
    assert plan_workers(1, n_cells=35, cpu_count=2) == (1, 2)  # one process: every core


def test_seeds_and_entries_from_the_command_line() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2,7-8") == [0, 2, 7, 8]
    assert parse_entries(" none,latent ") == ["none", "latent"]
    for bad in ("4-0", "a", "0-", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="ranges such as 0-4"):
            parse_seeds(bad)


def test_runs_of_different_namespaces_go_side_by_side(tmp_path: Path) -> None:
    """A study cell run writes its namespace and only reads the shared outputs: two cells
    at once are allowed; the same cell twice, or a run writing the shared outputs (the
    data split, the extractor) beside a cell, is refused."""
    cell = output_groups({"study.none_seed0"}, "mnist")
    assert cell == {"mnist.study.none_seed0": True, "mnist.shared": False}
    assert output_groups({None, "none"}, "mnist") == {"mnist.none": True, "mnist.shared": True}
    first, second, third = (ProjectRunLock(tmp_path) for _ in range(3))
    first.acquire(cell)
    second.acquire(output_groups({"study.none_seed1"}, "mnist"))
    with pytest.raises(ProjectBusyError, match="'mnist.study.none_seed0' outputs"):
        third.acquire(cell)
    with pytest.raises(ProjectBusyError, match="'mnist.shared' outputs"):
        third.acquire(output_groups({None}, "mnist"))
    # the same cell and the shared outputs of the other data set are its own
    third.acquire(output_groups({None, "study.none_seed0"}, "fashion_mnist"))
    third.release()
    first.release()
    second.release()
    third.acquire(output_groups({None, "study.none_seed0"}, "mnist"))  # free again
    third.release()
