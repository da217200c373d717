"""Runs side by side: a new tracking store opened by several processes at once, and a
second run in a project folder that is in use. Real processes, real SQLite stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from attn_pipeline.data.folder_lock import ProjectBusyError, ProjectRunLock
from tests.conftest import project_copy

pytestmark = pytest.mark.process

ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}


#: Put before a script: it says it is ready once its imports are done, then waits for the
#: file named by its first argument (the starting gun) to exist.
READY_THEN_WAIT = """
import sys
from pathlib import Path
print("ready", flush=True)
gun = Path(sys.argv[1])
while not gun.exists():
    pass
"""


def _start_together(
    script: str, runs: list[tuple[Path, list[str]]], gun: Path
) -> list[subprocess.Popen]:
    """Start ``script`` once per (folder, arguments) and release them at once, when every
    one has imported what it needs: however long the imports take, they race."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script.replace("#READY", READY_THEN_WAIT), str(gun), *args],
            cwd=cwd,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for cwd, args in runs
    ]
    for process in processes:
        line = process.stdout.readline()
        assert line.strip() == "ready", line + process.communicate()[0][-3000:]
    gun.touch()
    return processes


def test_four_processes_open_a_new_store_at_once(tmp_path: Path) -> None:
    """Without the lock, MLflow's schema migration races: most of the four fail and the
    store can be left half-migrated."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import mlflow
        from attn_pipeline.tracking.store import prepare_tracking_store
        #READY
        uri, name = sys.argv[2], sys.argv[3]
        prepare_tracking_store(uri, Path.cwd())
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("shared")
        with mlflow.start_run(run_name=name):
            mlflow.log_metric("x", 1.0)
        """
    )
    runs = [(tmp_path, [uri, f"run{i}"]) for i in range(4)]
    processes = _start_together(script, runs, tmp_path / "go")
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], outputs
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [
        (f"run{i}", "FINISHED") for i in range(4)
    ]


def test_a_second_run_in_a_busy_project_folder_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\n"
            "from attn_pipeline.data.folder_lock import ProjectRunLock\n"
            "lock = ProjectRunLock(Path(sys.argv[1]))\nlock.acquire()\nprint('held', flush=True)\n"
            "time.sleep(120)\n",
            str(tmp_path),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ProjectBusyError, match=rf"pid {holder.pid}.*git worktree add"):
            ProjectRunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    lock = ProjectRunLock(tmp_path)  # the kernel freed a killed run's lock: no stale lock
    lock.acquire()
    lock.release()


def test_four_kedro_runs_start_at_once_on_a_new_store(tmp_path: Path) -> None:
    """Four small `kedro run`s (four project folders, one brand-new store): every parent and
    child run FINISHED, and the store still usable afterwards."""
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    projects = [project_copy(tmp_path / f"p{i}") for i in range(4)]
    kedro = str(Path(sys.executable).with_name("kedro"))
    script = textwrap.dedent(
        """
        import os, subprocess, sys
        #READY
        kedro, uri = sys.argv[2], sys.argv[3]
        params = "data_prep.val_size=20,train.epochs=1,train.batch_size=50"
        sys.exit(subprocess.run(
            [kedro, "run", "--pipelines", "data_prep,train", "--params", params],
            env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        ).returncode)
        """
    )
    runs = [(project, [kedro, uri]) for project in projects]
    processes = _start_together(script, runs, tmp_path / "go")
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, [o[-2000:] for o in outputs]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("attn_pipeline_mnist").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 4 and len(children) == 8  # none and spatial_gate under each
    assert {r.info.status for r in runs} == {"FINISHED"}
    # the four trained the same weights (same data, seed and CPU): one version each model,
    # named on every run, however the registrations interleaved
    for entry in ("none", "spatial_gate"):
        versions = client.search_model_versions(f"name = 'attn_pipeline.mnist.{entry}'")
        assert len({v.tags["weights_hash"] for v in versions}) == 1
        assert len(versions) == 1, [(v.version, v.run_id) for v in versions]
        named = {
            r.data.tags["attn_pipeline.registered_model"]
            for r in children
            if r.data.tags["entry"] == entry
        }
        assert named == {f"attn_pipeline.mnist.{entry}/{versions[0].version}"}
    after = client.create_run(parents[0].info.experiment_id)
    client.log_metric(after.info.run_id, "store_still_usable", 1.0)
    assert client.get_run(after.info.run_id).data.metrics["store_still_usable"] == 1.0
