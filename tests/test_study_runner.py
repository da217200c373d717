"""The study's cells side by side (`attn-study`): the worker plan, per-namespace locks, and
a real study of two cells run as two concurrent processes against a real `mlflow server`
on a loopback port, then the comparison."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml

from attn_pipeline.config import StudyConfig
from attn_pipeline.run_guard import ProjectBusyError, ProjectRunLock, output_groups
from attn_pipeline.study_runner import plan_workers, study_cells
from tests.conftest import TINY_RUN, write_raw_dataset

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
TINY_STUDY = {
    **TINY_RUN,
    "train": {"epochs": 1, "batch_size": 50},
    "evaluate": {**TINY_RUN["evaluate"], "steer_samples": 20},
    "study": {
        "variants": ["none", "spatial_gate"],
        "seeds": [0],
        "baselines": ["none"],
        "workers": 2,
    },
}


def test_cells_run_seed_by_seed() -> None:
    """Every entry of a seed is queued before the next seed: a study stopped part way
    leaves whole seeds for the paired comparison."""
    study = StudyConfig(variants=["none", "latent"], seeds=[3, 1], baselines=["none"])
    assert study_cells(study) == [
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tracking_server(tmp_path: Path):
    """`mlflow server` on a free loopback port, with its own SQLite store and artifacts."""
    port = _free_port()
    folder = tmp_path / "server"
    folder.mkdir()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        cwd=folder,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def _tiny_project(root: Path) -> Path:
    project = root / "project"
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(TINY_STUDY))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()  # the package itself is imported from the environment
    write_raw_dataset(project / "data" / "01_raw" / "mnist")
    return project


def _attn_study(project: Path, tracking_uri: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("attn-study"))],
        check=False,
        cwd=project,
        env={**ENV, "MLFLOW_TRACKING_URI": tracking_uri},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_failed_cell_fails_the_study_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    """One cell cannot run (another process holds its namespace): the study says which
    and where its log is, makes no comparison and marks its MLflow run FAILED; the other
    cell finishes. Run again once the cell is free: the finished cell trains nothing
    again, and the study completes."""
    project = _tiny_project(tmp_path)
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    holder = ProjectRunLock(project)
    holder.acquire({"mnist.study.spatial_gate_seed0": True})
    try:
        out = _attn_study(project, uri)
    finally:
        holder.release()
    assert out.returncode == 1, out.stderr[-3000:]
    assert "1 cell(s) failed: study.spatial_gate_seed0" in out.stderr
    logs = project / "data/08_reporting/mnist/study/logs"
    assert (
        "'mnist.study.spatial_gate_seed0' outputs"
        in (logs / "study.spatial_gate_seed0.log").read_text()
    )
    assert not (project / "data/08_reporting/mnist/study/comparison.csv").exists()
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    (failed,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'compare'")
    assert failed.info.status == "FAILED"

    out = _attn_study(project, uri)
    assert out.returncode == 0, out.stderr[-3000:]
    # the finished cell's log keeps its training (first sitting) above the rerun's
    log = (logs / "study.none_seed0.log").read_text()
    sittings = log.split("==== ")[1:]
    assert len(sittings) == 2
    assert all(
        " kedro run --pipelines compare --namespaces study.none_seed0\n" in s for s in sittings
    )
    assert "epoch 1/1" in sittings[0] and "resuming after epoch 1 of 1" in sittings[1]
    assert (project / "data/08_reporting/mnist/study/comparison.csv").is_file()
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'compare'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]


def _study_with_a_training_cell(
    tmp_path: Path, epochs: int, stderr: Any
) -> tuple[Path, str, subprocess.Popen]:
    """(project, tracking URI, the `attn-study` process), once its first cell of ``epochs``
    epochs (one cell at a time) has opened its MLflow run and trains."""
    project = _tiny_project(tmp_path)
    (project / "conf" / "local" / "parameters.yml").write_text(
        yaml.safe_dump(
            {
                **TINY_STUDY,
                "train": {**TINY_STUDY["train"], "epochs": epochs},
                "study": {**TINY_STUDY["study"], "workers": 1},
            }
        )
    )
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    study = subprocess.Popen(
        [str(Path(sys.executable).with_name("attn-study"))],
        cwd=project,
        env={**ENV, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    first = project / "data/08_reporting/mnist/study/logs/study.none_seed0.log"
    deadline = time.monotonic() + 300
    while not (first.exists() and "MLflow run 'study.none_seed0'" in first.read_text()):
        assert study.poll() is None and time.monotonic() < deadline, "the cell never started"
        time.sleep(0.2)
    return project, uri, study


def test_stopping_the_study_stops_its_cell_and_starts_no_other(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) to `attn-study` while a cell trains: the cell's process is stopped
    (its MLflow run KILLED, no process left behind), the queued cell never starts, the log
    says which is which, and the study's own run ends KILLED."""
    output = tmp_path / "attn-study.log"
    # a cell long enough to be training whenever the signal lands (a cell that had finished
    # would be FINISHED, rightly)
    project, uri, study = _study_with_a_training_cell(tmp_path, 500, output.open("w"))
    first = project / "data/08_reporting/mnist/study/logs/study.none_seed0.log"
    study.send_signal(signal.SIGINT)
    assert study.wait(timeout=120) == 130
    assert not (first.parent / "study.spatial_gate_seed0.log").exists()
    said = output.read_text()
    assert "study.none_seed0 stopped (exit" in said
    assert "study.spatial_gate_seed0 not started (the study was stopped)" in said
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    (cell,) = client.search_runs(
        [experiment.experiment_id], "attributes.run_name = 'study.none_seed0'"
    )
    assert cell.info.status == "KILLED"
    with pytest.raises(ProcessLookupError):
        os.kill(int(cell.data.tags["attn_pipeline.pid"]), 0)
    (parent,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'compare'")
    assert parent.info.status == "KILLED"


def test_the_study_run_is_finished_only_with_its_comparison_and_killed_with_its_process(
    tmp_path: Path,
) -> None:
    """`attn-study` SIGKILLed while a cell trains: the cell, orphaned, finishes, and the
    study's run `compare` stays RUNNING (each step used to end it FINISHED), never FINISHED
    without a comparison; the next run against the store marks it KILLED."""
    # a cell still training when the study is killed, which then ends by itself
    project, uri, study = _study_with_a_training_cell(tmp_path, 30, subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    study.kill()
    study.wait(timeout=60)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    (cell,) = client.search_runs(
        [experiment.experiment_id], "attributes.run_name = 'study.none_seed0'"
    )
    orphan = int(cell.data.tags["attn_pipeline.pid"])
    while True:  # the orphaned cell runs to its end
        try:
            os.kill(orphan, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline + 300, "the orphaned cell never ended"
        time.sleep(0.5)
    (parent,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'compare'")
    assert parent.info.status == "RUNNING"
    assert not (project / "data/08_reporting/mnist/study/comparison.csv").exists()
    quick = subprocess.run(
        [str(Path(sys.executable).with_name("kedro")), "run", "--pipelines", "data_prep"],
        cwd=project,
        env={**ENV, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert quick.returncode == 0, quick.stderr[-3000:]
    assert client.get_run(parent.info.run_id).info.status == "KILLED"


def test_a_study_of_concurrent_cells_against_a_tracking_server(
    tmp_path: Path, tracking_server: str
) -> None:
    project = _tiny_project(tmp_path)
    out = _attn_study(project, tracking_server)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 cells, 2 at a time with 1 thread(s) each" in out.stderr

    client = mlflow.MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.info.run_name, r.info.status) for r in parents] == [("compare", "FINISHED")]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.info.run_name for r in children) == [
        "study.none_seed0",
        "study.spatial_gate_seed0",
    ]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert all("test/nll_iw" in r.data.metrics for r in children)
    # the two cells ran at once: each started before the other ended
    (a, b) = children
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
    assert len({r.data.tags["attn_pipeline.pid"] for r in children}) == 2
    # the comparison read both cells and went to the study's run on the server
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"comparison.csv", "differences.csv", "comparison.md", "runs.csv"} <= artifacts
    table = pd.read_csv(project / "data/08_reporting/mnist/study/comparison.csv")
    assert list(table["entry"]) == ["none", "spatial_gate"]
    logs = project / "data/08_reporting/mnist/study/logs"
    assert sorted(p.name for p in logs.iterdir()) == [
        "study.none_seed0.log",
        "study.spatial_gate_seed0.log",
    ]
