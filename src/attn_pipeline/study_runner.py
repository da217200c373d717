"""``attn-study``: the study with its cells side by side, each cell its own ``kedro run``.

``kedro run --pipelines compare`` runs every (entry, seed) cell one after another in one
process. The cells are independent, and on a CPU two one-thread processes do more work per
hour than one two-thread process (1.39x on 2 cores, ``benchmarks/study_workers.py``), so
this command runs the same ``compare`` pipeline in steps, as separate ``kedro run``
processes of the project:

1. the shared nodes (data split, feature extractor), once;
2. each cell (``--namespaces study.<entry>_seed<n>``), ``study.workers`` at a time, with
   the CPU threads divided between them;
3. the comparison (``--nodes compare_variants``), which reads the cells' saved summaries.

Every step resumes one MLflow run named ``compare``, created first (``MLFLOW_RUN_ID``), so
each cell's run is its child as in a one-process study, on a local SQLite store or on a
tracking server (``MLFLOW_TRACKING_URI=http://...``). Cells that finished earlier train and
evaluate nothing again (``train.resume`` and the evaluation cache), so a killed study is
started again with the same command. The same three steps run as independent jobs on other
machines against a shared server and storage (README, "Scaling out").
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import torch
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from attn_pipeline.config import StudyConfig, TrainConfig
from attn_pipeline.pipelines.compare.pipeline import cell_namespace
from attn_pipeline.tracking import PARENT_STAYS_RUNNING, owner_tags

logger = logging.getLogger("attn_pipeline.study")

#: Processes per GPU: the setting measured on an H100 (29 cells in 4 min 30 s, the GPU 21%
#: busy, README); not an optimum, more may pay.
WORKERS_PER_GPU = 8
#: The name of the study's parent run (kedro-mlflow names a run after its pipeline).
PARENT_RUN_NAME = "compare"


def plan_workers(
    workers: int | str, n_cells: int, cpu_count: int, gpus: int = 0
) -> tuple[int, int]:
    """(processes at once, CPU threads per process). ``auto``: one process per CPU core,
    one thread each; with GPUs, at most :data:`WORKERS_PER_GPU` per GPU. Never more
    processes than cells; the cores are shared out evenly between the processes."""
    if workers == "auto":
        wanted = cpu_count if gpus == 0 else min(cpu_count, WORKERS_PER_GPU * gpus)
    else:
        wanted = int(workers)
    processes = max(1, min(wanted, n_cells))
    return processes, max(1, cpu_count // processes)


#: The ``kedro run`` processes under way, so that a stopped study stops them too.
_RUNNING: set[subprocess.Popen] = set()
_LOCK = threading.RLock()  # re-entrant: the signal handler may interrupt a holder
#: Set once the study is stopped: no further process starts, and the cells still queued
#: return at once as "not started".
_STOPPING = threading.Event()
#: The signal that stopped the study (its exit code is 128 + it, as a shell reports).
_STOP_SIGNAL: list[int] = []


def _kedro(args: list[str], env: dict[str, str], log: Path | None = None) -> int | None:
    """``kedro run args``'s exit code; None when it was not started (the study is stopping).

    Its output goes to ``log`` when given, appended after a line that says when and what ran:
    a study started again keeps each cell's earlier sittings (its training epochs) above the
    new one, which for a finished cell only says that nothing was left to do."""
    command = [sys.executable, "-m", "kedro", "run", *args]
    out = None
    try:
        with _LOCK:
            if _STOPPING.is_set():
                return None
            if log is not None:
                log.parent.mkdir(parents=True, exist_ok=True)
                out = open(log, "a")  # noqa: SIM115 (closed below, after the process ends)
                out.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} kedro run {' '.join(args)}\n")
                out.flush()
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            _RUNNING.add(process)
        try:
            return process.wait()
        finally:
            with _LOCK:
                _RUNNING.discard(process)
    finally:
        if out is not None:
            out.close()


def _stop_cells(signum: int, frame: object) -> None:
    """Pass SIGINT / SIGTERM on to every cell process (each ends its MLflow runs as KILLED
    and keeps its saved epochs) and start no other. The handler returns: the study's own
    flow then sees every cell end (stopped, or not started) and reports each, whatever the
    order in which the worker threads notice. (Raising here instead left it to the executor
    whether a queued cell was cancelled silently or reported.)"""
    with _LOCK:
        if not _STOP_SIGNAL:
            _STOP_SIGNAL.append(signum)
        _STOPPING.set()
        running = list(_RUNNING)
    for process in running:
        process.send_signal(signal.SIGTERM)


def _stopped(client: mlflow.MlflowClient, parent: str) -> int:
    """End the stopped study: its parent run KILLED, the exit code of the signal."""
    client.set_terminated(parent, "KILLED")
    logger.warning("study: stopped; run the same command again to go on")
    return 128 + _STOP_SIGNAL[0]


def _create_parent_run(context) -> str:
    """A new ``compare`` run in the project's experiment, on the project's tracking store."""
    config = context.mlflow  # kedro-mlflow's configuration, set up when the context was made
    client = mlflow.MlflowClient(config.server.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment.name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(config.tracking.experiment.name)
    )
    # owned by this process: if it dies, the next run against the store marks it KILLED
    run = client.create_run(experiment_id, run_name=PARENT_RUN_NAME, tags=owner_tags())
    return run.info.run_id


def study_cells(study: StudyConfig) -> list[str]:
    """The namespaces of the study's cells, seed by seed (every entry at the first seed,
    then every entry at the next): a study stopped part way leaves whole seeds, which
    pair with each other in the comparison."""
    return [cell_namespace(entry, seed) for seed in study.seeds for entry in study.variants]


def run_study(project: Path, env: str | None = None, workers: int | str | None = None) -> int:
    """Run the study of ``project`` as above; returns 0 when every step succeeded."""
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        context = session.load_context()
        params = context.config_loader["parameters"]  # plain values (context.params: typed)
        overrides = {} if workers is None else {"workers": workers}
        # checked before anything runs: a bad value stops the study with pydantic's message
        study = StudyConfig.model_validate({**params.get("study", {}), **overrides})
        device = TrainConfig.model_validate(params.get("train", {})).device
        dataset = str(params.get("dataset", ""))
        parent = _create_parent_run(context)
    cells = study_cells(study)
    gpus = _gpus(device)
    processes, threads = plan_workers(study.workers, len(cells), os.cpu_count() or 1, gpus)
    base = ["--pipelines", "compare", *(["--env", env] if env else [])]
    child_env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }

    def step(args: list[str], log: Path | None = None, last: bool = False) -> int | None:
        """A `kedro run` of the study's parent run; every step but the last leaves it
        RUNNING (FINISHED only once the comparison is written)."""
        stays = {} if last else {PARENT_STAYS_RUNNING: "1"}
        return _kedro(base + args, {**child_env, "MLFLOW_RUN_ID": parent, **stays}, log)

    logs = project / "data" / "08_reporting" / dataset / "study" / "logs"
    logger.info(
        "study: %d cells, %d at a time with %d thread(s) each; MLflow run %s",
        len(cells),
        processes,
        threads,
        parent,
    )
    started = time.monotonic()
    shared = [
        node.name
        for node in pipelines["compare"].nodes  # registered once the project is bootstrapped
        if not node.namespace and node.name != "compare_variants"
    ]
    client = mlflow.MlflowClient(context.mlflow.server.mlflow_tracking_uri)
    if step(["--nodes", ",".join(shared)]) != 0:
        if _STOPPING.is_set():
            return _stopped(client, parent)
        logger.error("study: the shared step failed (output above)")
        client.set_terminated(parent, "FAILED")
        return 1

    def cell(name: str) -> int | None:
        code = step(["--namespaces", name], logs / f"{name}.log")
        if code is None:
            outcome = "not started (the study was stopped)"
        elif code != 0 and _STOPPING.is_set():
            outcome = f"stopped (exit {code}); its finished epochs are kept"
        else:
            outcome = "done" if code == 0 else f"FAILED (exit {code})"
        logger.info("study: %s %s", name, outcome)
        return code

    cells_started = time.monotonic()
    with ThreadPoolExecutor(max_workers=processes) as pool:
        codes = dict(zip(cells, pool.map(cell, cells), strict=True))
    if _STOPPING.is_set():
        return _stopped(client, parent)
    cells_hours = (time.monotonic() - cells_started) / 3600
    logger.info(
        "study: %d cells in %.1f min, %.1f cells per hour",
        len(cells),
        cells_hours * 60,
        len(cells) / cells_hours,
    )
    failed = [name for name, code in codes.items() if code != 0]
    if failed:
        logger.error(
            "study: %d cell(s) failed: %s; their logs are in %s. Run the same command again: "
            "finished cells are not trained or evaluated again.",
            len(failed),
            ", ".join(failed),
            logs,
        )
        client.set_terminated(parent, "FAILED")
        return 1
    code = step(["--nodes", "compare_variants"], last=True)
    if _STOPPING.is_set():
        return _stopped(client, parent)
    logger.info("study: finished in %.1f min", (time.monotonic() - started) / 60)
    return code


def _gpus(device: str) -> int:
    """GPUs the cells will train on: CUDA devices where ``train.device`` lets them."""
    return torch.cuda.device_count() if device in ("auto", "cuda") else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attn-study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", help="Kedro configuration environment (e.g. fashion_mnist)")
    parser.add_argument(
        "--workers",
        type=lambda v: v if v == "auto" else int(v),
        help="cells at once (default: study.workers)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_cells)
    return run_study(Path.cwd(), env=args.env, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
