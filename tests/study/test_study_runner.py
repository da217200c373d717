"""The study on Dask (`attn-study`): the worker plan, the command line, per-namespace
locks, and real studies: cells as concurrent processes of a LocalCluster, Ctrl-C and
SIGKILL, and two `dask worker`s in separate project folders (two machines sharing no
`data/`) against a real `mlflow server` on a loopback port, one of them killed mid-cell."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import distributed
import mlflow
import pandas as pd
import psutil
import pytest
import yaml

from attn_pipeline.spec.cells import CELL_KEY_TAG, study_cells
from attn_pipeline.spec.config import StudyConfig
from attn_pipeline.study.runner import parse_entries, parse_seeds, plan_workers
from attn_pipeline.tracking.store import ProjectBusyError, ProjectRunLock, output_groups
from tests.conftest import PROJECT_ROOT, TINY_RUN, write_raw_dataset

#: Real processes and stores: `make test-fast` (pytest -m "not slow") leaves these out.
pytestmark = pytest.mark.slow

ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
TINY_STUDY = {
    **TINY_RUN,
    "train": {"epochs": 1, "batch_size": 50},
    "evaluate": {**TINY_RUN["evaluate"], "steer_samples": 20},
    "study": {
        "entries": ["none", "spatial_gate"],
        "seeds": [0],
        "baselines": ["none"],
        "workers": 2,
    },
}


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


def _attn_study(project: Path, tracking_uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("attn-study")), "--dashboard", "none", *args],
        check=False,
        cwd=project,
        env={**ENV, "MLFLOW_TRACKING_URI": tracking_uri},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _runs(uri: str, filter_string: str = "") -> list:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    return client.search_runs(
        [experiment.experiment_id], filter_string, order_by=["attributes.start_time ASC"]
    )


def test_bad_entries_stop_the_study_before_anything_runs(tmp_path: Path) -> None:
    project = _tiny_project(tmp_path)
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    out = _attn_study(project, uri, "--entries", "none,nonesuch")
    assert out.returncode == 2
    assert "entries ['nonesuch'] have no '<name>.model' block" in out.stderr
    out = _attn_study(project, uri, "--entries", "spatial_gate")
    assert out.returncode == 2 and "has none of the study's baselines ['none']" in out.stderr
    out = _attn_study(project, uri, "--seeds", "3-1")
    assert out.returncode == 2 and "ranges such as 0-4" in out.stderr
    assert not (project / "mlruns").exists() or not _runs(uri)  # no run was made


def test_a_failed_cell_fails_the_study_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    """One cell cannot run (another process holds its namespace): the study says which
    and where its log is, makes no comparison and marks its MLflow run FAILED; the other
    cell finishes. Run again once the cell is free: the finished cell is found on the
    tracking store by its key and not run again, and the study completes."""
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
    assert f"its log: {logs / 'study.spatial_gate_seed0.log'}" in out.stderr
    assert (
        "'mnist.study.spatial_gate_seed0' outputs"
        in (logs / "study.spatial_gate_seed0.log").read_text()
    )
    assert not (project / "data/08_reporting/mnist/study/comparison.csv").exists()
    (failed,) = _runs(uri, "attributes.run_name = 'study'")
    assert failed.info.status == "FAILED"

    out = _attn_study(project, uri)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 cells, 1 finished before (reused), 1 to run" in out.stderr
    # the finished cell's log has its one sitting: no process was started for it again
    log = (logs / "study.none_seed0.log").read_text()
    assert log.count("==== ") == 1 and "epoch 1/1" in log
    assert (project / "data/08_reporting/mnist/study/comparison.csv").is_file()
    parents = _runs(uri, "attributes.run_name = 'study'")
    assert [r.info.status for r in parents] == ["FAILED", "FINISHED"]
    (reused,) = _runs(uri, "attributes.run_name = 'study.none_seed0'")
    assert parents[1].data.tags["attn_pipeline.reused_cell.study.none_seed0"] == reused.info.run_id


def test_a_failing_shared_step_starts_no_other_cell(tmp_path: Path) -> None:
    """The raw data are missing: the shared step fails in the first cells, whose logs say
    which file and the command that fetches it, and the study starts no other cell (each
    would fail the same way) and fails at once, naming the log."""
    project = _tiny_project(tmp_path)
    shutil.rmtree(project / "data" / "01_raw" / "mnist")
    (project / "conf" / "local" / "parameters.yml").write_text(
        yaml.safe_dump(
            {**TINY_STUDY, "study": {**TINY_STUDY["study"], "workers": 1, "seeds": [0, 1, 2]}}
        )
    )
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    out = _attn_study(project, uri)
    assert out.returncode == 1, out.stderr[-3000:]
    shared_log = project / "data/08_reporting/mnist/study/logs/shared.log"
    assert f"failed on {socket.gethostname()}, so no other cell is started" in out.stderr
    assert f"fix what its log says ({shared_log})" in out.stderr
    assert "run `attn-fetch-data mnist` first" in shared_log.read_text()
    assert out.stderr.count("not started (the shared step failed)") == 5  # of 6 cells
    assert shared_log.read_text().count("==== ") == 1  # tried once, not once per cell


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
        [str(Path(sys.executable).with_name("attn-study")), "--dashboard", "none"],
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


def _wait_gone(pid: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"process {pid} is still there"
        time.sleep(0.2)


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
    assert study.wait(timeout=180) == 130
    assert not (first.parent / "study.spatial_gate_seed0.log").exists()
    said = output.read_text()
    assert "study.none_seed0 stopped on" in said
    assert "study.spatial_gate_seed0 not started (the study was stopped)" in said
    (cell,) = _runs(uri, "attributes.run_name = 'study.none_seed0'")
    assert cell.info.status == "KILLED"
    _wait_gone(int(cell.data.tags["attn_pipeline.pid"]), 1)
    (parent,) = _runs(uri, "attributes.run_name = 'study'")
    assert parent.info.status == "KILLED"


def _cell_processes(project: Path) -> dict[str, psutil.Process]:
    """The cell processes running in ``project``, by namespace."""
    found = {}
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = process.info["cmdline"] or []
        if process.info["cwd"] == str(project) and "--namespaces" in cmdline:
            found[cmdline[cmdline.index("--namespaces") + 1]] = process
    return found


def test_a_study_of_concurrent_cells_against_a_tracking_server(
    tmp_path: Path, tracking_server: str
) -> None:
    """The cells run at once against a real `mlflow server`; watched throughout, no cell's
    run reads FINISHED while its process is still there."""
    project = _tiny_project(tmp_path)
    command = [str(Path(sys.executable).with_name("attn-study")), "--dashboard", "none"]
    study = subprocess.Popen(
        command,
        cwd=project,
        env={**ENV, "MLFLOW_TRACKING_URI": tracking_server},
        stderr=(tmp_path / "attn-study.log").open("w"),
    )
    seen_finished: set[str] = set()
    while study.poll() is None:
        alive = set(_cell_processes(project))
        with contextlib.suppress(Exception):  # the experiment may not exist yet
            for run in _runs(tracking_server, "attributes.status = 'FINISHED'"):
                assert run.info.run_name not in alive, (
                    f"{run.info.run_name} FINISHED, still running"
                )
                seen_finished.add(run.info.run_name)
        time.sleep(0.1)
    said = (tmp_path / "attn-study.log").read_text()
    out = subprocess.CompletedProcess(command, study.returncode, "", said)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {"study.none_seed0", "study.spatial_gate_seed0"} <= seen_finished | {
        r.info.run_name for r in _runs(tracking_server, "attributes.status = 'FINISHED'")
    }
    assert "2 cells, 0 finished before (reused), 2 to run" in out.stderr
    assert "2 at a time with 1 thread(s) each" in out.stderr

    runs = _runs(tracking_server)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.info.run_name, r.info.status) for r in parents] == [("study", "FINISHED")]
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
    artifacts = {
        a.path for a in mlflow.MlflowClient(tracking_server).list_artifacts(parents[0].info.run_id)
    }
    assert {"comparison.csv", "differences.csv", "comparison.md", "runs.csv"} <= artifacts
    table = pd.read_csv(project / "data/08_reporting/mnist/study/comparison.csv")
    assert list(table["entry"]) == ["none", "spatial_gate"]
    logs = project / "data/08_reporting/mnist/study/logs"
    assert sorted(p.name for p in logs.glob("*.log")) == [
        "shared.log",
        "study.none_seed0.log",
        "study.spatial_gate_seed0.log",
    ]


def _study_on(address: str) -> tuple[str, ...]:
    """The two-machine study's command line: the cells come from it, not the configuration."""
    return ("--scheduler", address, "--seeds", "0-1", "--entries", "none,spatial_gate")


def _dask_scheduler(tmp_path: Path) -> tuple[str, subprocess.Popen]:
    port = _free_port()
    scheduler = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dask")),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "scheduler.log").open("w"),
        start_new_session=True,
    )
    return f"tcp://127.0.0.1:{port}", scheduler


def _dask_worker(address: str, folder: Path, name: str) -> subprocess.Popen:
    """`dask worker` as on another machine: started in its own copy of the project."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dask")),
            "worker",
            address,
            "--nthreads",
            "1",
            "--name",
            name,
            "--no-dashboard",
        ],
        cwd=folder,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=(folder.parent / f"{name}.log").open("w"),
        start_new_session=True,
    )


def _kill_the_worker_of_the_first_cell(folder: Path, killed: list[int]) -> None:
    """SIGKILL the Dask worker process running a cell in ``folder``, once the cell trains."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for namespace, process in _cell_processes(folder).items():
            log = folder / "data/08_reporting/mnist/study/logs" / f"{namespace}.log"
            if log.exists() and "epoch 1/" in log.read_text():
                worker = process.parent()
                killed.append(worker.pid)
                worker.kill()
                return
        time.sleep(0.2)


def test_a_study_on_two_machines_sharing_only_the_tracking_server(
    tmp_path: Path, tracking_server: str
) -> None:
    """Two `dask worker`s, each in its own copy of the project (no shared `data/`), a
    scheduler, a loopback `mlflow server` with proxied artifacts, and the study started
    from a third folder with `--scheduler`, `--seeds` and `--entries`. One worker is
    SIGKILLed while its cell trains: the cell runs again elsewhere and the study finishes.
    The comparison is made from MLflow alone. Started again, the finished study starts no
    `kedro run` for its cells."""
    machines = [_tiny_project(tmp_path / name) for name in ("machine_a", "machine_b")]
    # the entries and seeds come from the command line: the configuration lists others
    for project in machines:
        conf = project / "conf" / "local" / "parameters.yml"
        conf.write_text(
            yaml.safe_dump({**TINY_STUDY, "train": {**TINY_STUDY["train"], "epochs": 3}})
        )
    (tmp_path / "client").mkdir()
    client_project = _tiny_project(tmp_path / "client")
    shutil.copy(machines[0] / "conf/local/parameters.yml", client_project / "conf/local")
    shutil.rmtree(client_project / "data")  # the client needs no data: it reads MLflow
    address, scheduler = _dask_scheduler(tmp_path)
    workers = [_dask_worker(address, project, project.parent.name) for project in machines]
    killed: list[int] = []
    try:
        with distributed.Client(address, timeout=60) as dask_client:
            dask_client.wait_for_workers(2, timeout=120)
        killer = threading.Thread(
            target=_kill_the_worker_of_the_first_cell, args=(machines[0], killed)
        )
        killer.start()
        out = _attn_study(client_project, tracking_server, *_study_on(address))
        killer.join()
        assert out.returncode == 0, out.stderr[-5000:]
        assert killed, "no cell was seen training on machine_a"
        assert "4 cells, 0 finished before (reused), 4 to run" in out.stderr

        runs = _runs(tracking_server)
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert (parent.info.run_name, parent.info.status) == ("study", "FINISHED")
        cells = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        finished = {r.info.run_name: r for r in cells if r.info.status == "FINISHED"}
        assert sorted(finished) == [
            "study.none_seed0",
            "study.none_seed1",
            "study.spatial_gate_seed0",
            "study.spatial_gate_seed1",
        ]
        # the killed worker's cell: its run ended KILLED (its process went with the worker)
        assert [r.info.status for r in cells if r.info.status != "FINISHED"] in ([], ["KILLED"])
        assert all("test/nll_iw" in r.data.metrics for r in finished.values())
        assert all(r.data.tags[CELL_KEY_TAG] for r in finished.values())
        # each cell recorded what it was measured on; both machines made the same
        assert len({r.data.tags["data_hash"] for r in finished.values()}) == 1
        assert len({r.data.tags["feature_extractor_hash"] for r in finished.values()}) == 1
        # both machines ran cells, each in its own folder
        for project in machines:
            assert list((project / "data/08_reporting/mnist/study/logs").glob("study.*.log"))
        # the comparison, made from MLflow alone, locally and on the study's run
        table = pd.read_csv(client_project / "data/08_reporting/mnist/study/comparison.csv")
        assert list(table["entry"]) == ["none", "spatial_gate"]
        assert list(table["seeds"]) == [2, 2]
        downloaded = mlflow.artifacts.download_artifacts(
            run_id=parent.info.run_id,
            artifact_path="comparison.md",
            dst_path=str(tmp_path / "downloaded"),
            tracking_uri=tracking_server,
        )
        assert "| spatial_gate | none |" in Path(downloaded).read_text()

        _resume_starts_no_cell(client_project, tracking_server, address, machines)
    finally:
        for process in (*workers, scheduler):
            os.killpg(process.pid, signal.SIGTERM)
        for process in (*workers, scheduler):
            process.wait(timeout=60)


def _resume_starts_no_cell(
    client_project: Path, tracking_server: str, address: str, machines: list[Path]
) -> None:
    """The same study again, every cell finished: no `kedro run` on any worker."""
    logs = {
        p: p.read_text()
        for project in machines
        for p in (project / "data/08_reporting/mnist/study/logs").glob("*.log")
    }
    again = _attn_study(client_project, tracking_server, *_study_on(address))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 cells, 4 finished before (reused), 0 to run" in again.stderr
    assert "Dask scheduler" not in again.stderr  # no cell was submitted
    assert logs == {p: p.read_text() for p in logs}  # no worker started a kedro run
    parents = _runs(tracking_server, "attributes.run_name = 'study'")
    assert [r.info.status for r in parents] == ["FINISHED", "FINISHED"]
