"""The study on Dask (`attn-study`): the worker plan, the command line, per-namespace
locks, and real studies: cells as concurrent processes of a LocalCluster, Ctrl-C and
SIGKILL, and two `dask worker`s in separate project folders (two machines sharing no
`data/`) against a real `mlflow server` on a loopback port, one of them killed mid-cell."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import distributed
import mlflow
import pandas as pd
import psutil
import pytest
import yaml

from attn_pipeline.spec.cells import CELL_KEY_TAG
from tests.conftest import TINY_RUN, free_port, project_copy, wait_until_answering

pytestmark = pytest.mark.process

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


@pytest.fixture
def tracking_server(tmp_path: Path):
    """`mlflow server` on a free loopback port, with its own SQLite store and artifacts."""
    port = free_port()
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
        wait_until_answering(f"{uri}/health", server, seconds=120)
        yield uri
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def _tiny_project(root: Path) -> Path:
    return project_copy(root / "project", TINY_STUDY, n_train=240, n_test=60)


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


def _study_on(address: str) -> tuple[str, ...]:
    """The two-machine study's command line: the cells come from it, not the configuration."""
    return ("--scheduler", address, "--seeds", "1", "--entries", "none,spatial_gate")


def _dask_scheduler(tmp_path: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
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
    SIGKILLed while its cell trains: the cell runs again elsewhere and the study finishes;
    watched throughout, no cell's run reads FINISHED while its process is still there.
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
        watching, early, looks = threading.Event(), [], []
        watcher = threading.Thread(
            target=_watch_finished_runs,
            args=(tmp_path / "server" / "mlflow.db", machines, watching, early, looks),
        )
        watcher.start()
        try:
            out = _attn_study(client_project, tracking_server, *_study_on(address))
        finally:
            watching.set()
            killer.join()
            watcher.join()
        assert out.returncode == 0, out.stderr[-5000:]
        assert not early, f"runs read FINISHED while their cell's process ran: {early}"
        assert len(looks) > 50, "the watcher stopped before the cells ran"
        assert killed, "no cell was seen training on machine_a"
        assert "2 cells, 0 finished before (reused), 2 to run" in out.stderr

        _check_the_finished_study(tracking_server, client_project, machines, tmp_path)
        _resume_starts_no_cell(client_project, tracking_server, address, machines)
    finally:
        for process in (*workers, scheduler):
            os.killpg(process.pid, signal.SIGTERM)
        for process in (*workers, scheduler):
            process.wait(timeout=60)


def _check_the_finished_study(
    tracking_server: str, client_project: Path, machines: list[Path], tmp_path: Path
) -> None:
    """Every cell FINISHED under the study's run, from both machines, and the comparison
    made from MLflow alone, locally and on the study's run."""
    runs = _runs(tracking_server)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert (parent.info.run_name, parent.info.status) == ("study", "FINISHED")
    cells = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    finished = {r.info.run_name: r for r in cells if r.info.status == "FINISHED"}
    assert sorted(finished) == [
        "study.none_seed1",
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
    assert list(table["seeds"]) == [1, 1]
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id,
        artifact_path="comparison.md",
        dst_path=str(tmp_path / "downloaded"),
        tracking_uri=tracking_server,
    )
    assert "| spatial_gate | none |" in Path(downloaded).read_text()


def _watch_finished_runs(
    store: Path, folders: list[Path], stop: threading.Event, early: list[str], looks: list[int]
) -> None:
    """Until ``stop``: every 0.1 s, each FINISHED cell run whose process is still there, read
    from the server's SQLite store itself (a query through the server would cost it CPU the
    study needs, ten times a second); ``looks`` counts the looks made while cells ran."""
    while not stop.is_set():
        alive = {n for folder in folders for n in _cell_processes(folder)}
        if alive:
            with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
                finished = db.execute("SELECT name FROM runs WHERE status = 'FINISHED'")
                early += [name for (name,) in finished if name in alive]
            looks.append(len(alive))
        time.sleep(0.1)


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
    assert "2 cells, 2 finished before (reused), 0 to run" in again.stderr
    assert "Dask scheduler" not in again.stderr  # no cell was submitted
    assert logs == {p: p.read_text() for p in logs}  # no worker started a kedro run
    parents = _runs(tracking_server, "attributes.run_name = 'study'")
    assert [r.info.status for r in parents] == ["FINISHED", "FINISHED"]
