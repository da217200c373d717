"""``attn-study``: the study's cells as Dask tasks, each its own ``kedro run``.

``kedro run --pipelines compare`` runs every (entry, seed) cell one after another in one
process. The cells are independent, so this command hands them to Dask's distributed
scheduler: a ``LocalCluster`` of ``study.workers`` one-thread processes on this machine
(two one-thread processes did 1.42x the cells per hour of one two-thread process on a
2-core machine, ``benchmarks/study_workers.py``), or an existing cluster (``--scheduler``, or
``DASK_SCHEDULER_ADDRESS``). A task runs its cell as a ``kedro run --namespaces
study.<entry>_seed<n>`` process in the worker's own copy of the project, so no Kedro or
MLflow state is shared between cells, and machines need to share nothing but the MLflow
tracking server:

1. the study's MLflow run (``compare``) is created; every cell already FINISHED with the
   same key (code, configuration, seed: :func:`attn_pipeline.study.cell_key`), in this
   study or an earlier one, is reused and named on it, and not run again;
2. each remaining cell runs on a worker, after the shared step (data split, feature
   extractor: deterministic) has run once in that worker's folder; its run is a child of
   the study's run and records the hashes of its data and extractor;
3. the comparison (``kedro run --pipelines study_report``) reads every cell's summary from
   the tracking server and writes its tables locally and to the study's run.

Ctrl-C stops the cells (their runs end KILLED, finished epochs are kept) and ends the
study's run KILLED; the same command then goes on where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml
from distributed import Client, LocalCluster, as_completed
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from attn_pipeline.config import ConfigError, StudyConfig, TrainConfig
from attn_pipeline.datasets import REUSED_CELL_TAG_PREFIX
from attn_pipeline.run_guard import sqlite_path
from attn_pipeline.run_lifecycle import PARENT_STAYS_RUNNING, owner_tags
from attn_pipeline.study import CELL_KEY_TAG, cell_key, study_cells

logger = logging.getLogger("attn_pipeline.study")

#: Processes per GPU: the setting measured on an H100 (29 cells in 4 min 30 s, the GPU 21%
#: busy, docs/performance.md); not an optimum, more may pay.
WORKERS_PER_GPU = 8
#: The name of the study's parent run (kedro-mlflow names a run after its pipeline).
PARENT_RUN_NAME = "compare"
#: Where a worker's copy of the project is, when not the worker's working directory.
PROJECT_ENV = "ATTN_PIPELINE_PROJECT"


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


def parse_seeds(text: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``0,2,7-8`` -> [0, 2, 7, 8]."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise argparse.ArgumentTypeError(
                f"seeds {text!r}: give numbers and ranges such as 0-4 or 0,2,7-8"
            )
        first = int(match[1])
        seeds += range(first, int(match[2] or first) + 1)
    return seeds


def parse_entries(text: str) -> list[str]:
    """``none,latent`` -> ["none", "latent"]."""
    entries = [name.strip() for name in text.split(",") if name.strip()]
    if not entries:
        raise argparse.ArgumentTypeError(f"entries {text!r}: give names such as none,latent")
    return entries


# ---- on a worker -------------------------------------------------------------------------


@dataclass(frozen=True)
class CellJob:
    """What a worker needs to run one cell; the client makes it, a Dask task runs it."""

    namespace: str
    entry: str
    seed: int
    study_run_id: str
    tracking_uri: str
    dataset: str
    env: str | None
    #: CPU threads of the cell's process; None: the worker's OMP_NUM_THREADS (1 under Dask)
    threads: int | None
    #: the nodes of the shared step (data split, feature extractor)
    shared_nodes: tuple[str, ...]


@dataclass(frozen=True)
class CellOutcome:
    namespace: str
    exit_code: int | None  # None: not started (the study was stopped)
    host: str
    log: str
    #: the shared step (data split, extractor) failed in the worker's folder: every other
    #: cell there would fail the same way (missing raw data, a bad parameter)
    shared_step_failed: bool = False


#: The cell processes under way in this worker process, so that a stopped study stops them.
_RUNNING: dict[subprocess.Popen, str] = {}
#: Studies stopped: their cells still queued on this worker do not start.
_STOPPED_STUDIES: set[str] = set()
_LOCK = threading.Lock()

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:  # not Linux: a cell whose worker dies is stopped by the next study instead
    _prctl = None


def _stop_with_parent() -> None:
    """In the cell's process before it starts: SIGTERM when the worker dies, so that a
    killed worker leaves no cell running behind it (its run then ends KILLED)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _worker_project() -> Path:
    project = Path(os.environ.get(PROJECT_ENV) or os.getcwd())
    if not (project / "conf").is_dir() or not (project / "pyproject.toml").is_file():
        raise RuntimeError(
            f"the Dask worker on {socket.gethostname()} runs in {project}, which is not a "
            f"copy of the project: start `dask worker` in the project's folder, or set "
            f"{PROJECT_ENV} to it"
        )
    return project


def _study_override(entries: list[str], seeds: list[int], baselines: list[str]) -> dict:
    return {"study": {"entries": entries, "seeds": seeds, "baselines": baselines}}


def kedro_run(
    project: Path,
    args: list[str],
    env: dict[str, str],
    params: dict[str, Any],
    log: Path | None = None,
    study_run_id: str = "",
) -> int | None:
    """``kedro run args`` in ``project`` with runtime parameters ``params`` (a run
    configuration file: ``--params`` cannot give a list); its exit code, None when not
    started because the study was stopped. Output goes to ``log`` when given, appended
    after a line that says when and what ran."""
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as config:
        yaml.safe_dump({"run": {"params": params}}, config)
    command = [sys.executable, "-m", "kedro", "run", "--config", config.name, *args]
    out = None
    try:
        with _LOCK:
            if study_run_id in _STOPPED_STUDIES:
                return None
            if log is not None:
                log.parent.mkdir(parents=True, exist_ok=True)
                out = open(log, "a")  # noqa: SIM115 (closed below, after the process ends)
                out.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} kedro run {' '.join(args)}\n")
                out.flush()
            process = subprocess.Popen(
                command,
                cwd=project,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_stop_with_parent,  # noqa: PLW1509 (prctl alone: takes no lock)
            )
            _RUNNING[process] = " ".join(args)
        try:
            return process.wait()
        except BaseException:  # the study stopped while its own step ran: stop it too
            process.terminate()
            process.wait()
            raise
        finally:
            with _LOCK:
                _RUNNING.pop(process, None)
    finally:
        os.unlink(config.name)
        if out is not None:
            out.close()


def run_cell(job: CellJob) -> CellOutcome:
    """One cell on this worker: the shared step first if this folder has not made it for
    this study (once per folder, whichever worker gets there first), then the cell."""
    project = _worker_project()
    logs = project / "data" / "08_reporting" / job.dataset / "study" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": job.tracking_uri,
        "MLFLOW_RUN_ID": job.study_run_id,
        PARENT_STAYS_RUNNING: "1",
    }
    threads = job.threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    base = ["--pipelines", "compare", *(["--env", job.env] if job.env else [])]
    # the cell's own pipeline: its entry at its seed, and the shared nodes
    params = _study_override([job.entry], [job.seed], [job.entry])
    host = socket.gethostname()
    done = logs / f".shared-{job.study_run_id}"
    with open(logs / ".shared.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            code = kedro_run(
                project,
                [*base, "--nodes", ",".join(job.shared_nodes)],
                env,
                params,
                logs / "shared.log",
                job.study_run_id,
            )
            if code != 0:
                shared_log = str(logs / "shared.log")
                return CellOutcome(job.namespace, code, host, shared_log, shared_step_failed=True)
            done.touch()
    log = logs / f"{job.namespace}.log"
    code = kedro_run(
        project, [*base, "--namespaces", job.namespace], env, params, log, job.study_run_id
    )
    return CellOutcome(job.namespace, code, host, str(log))


def stop_cells(study_run_id: str) -> list[str]:
    """On a worker: start no other cell of the study, stop the running ones (SIGTERM: each
    ends its MLflow runs KILLED and keeps its saved epochs) and wait for them to end.
    Returns what was stopped."""
    with _LOCK:
        _STOPPED_STUDIES.add(study_run_id)
        running = dict(_RUNNING)
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=120)
    return list(running.values())


# ---- on the client -------------------------------------------------------------------------


class StudyStopped(Exception):  # noqa: N818 (a stop, not an error)
    """SIGINT or SIGTERM reached the study."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    # once: a second Ctrl-C must not cut short the stopping of the cells
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise StudyStopped(signum)


def _absolute_tracking_uri(uri: str, project: Path) -> str:
    """The URI every worker can open: a local SQLite store by its absolute path."""
    database = sqlite_path(uri, project)
    return uri if database is None else f"sqlite:///{database}"


@dataclass
class _Plan:
    study: StudyConfig
    params: dict[str, Any]
    tracking_uri: str
    experiment: str
    dataset: str
    shared_nodes: tuple[str, ...]
    gpus: int
    #: what each cell asks of a worker: ``GPU: 1`` where ``train.device`` is ``cuda``
    resources: dict[str, float] | None


def _plan(
    project: Path,
    env: str | None,
    workers: int | str | None,
    seeds: list[int] | None,
    entries: list[str] | None,
) -> _Plan:
    """The study as configured and overridden on the command line, checked before
    anything runs: a bad value stops it with one line naming the fix."""
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        context = session.load_context()
        params = context.config_loader["parameters"]  # plain values (context.params: typed)
        configured = dict(params.get("study", {}))
        overrides: dict[str, Any] = {}
        if workers is not None:
            overrides["workers"] = workers
        if seeds is not None:
            overrides["seeds"] = seeds
        if entries is not None:
            overrides["entries"] = entries
            # the configured baselines that are among the entries
            baselines = list(configured.get("baselines") or [])
            overrides["baselines"] = [b for b in baselines if b in entries]
            if not overrides["baselines"]:
                raise ConfigError(
                    f"--entries {','.join(entries)} has none of the study's baselines "
                    f"{baselines}: add one (the comparison pairs every entry with a baseline)"
                )
        try:
            study = StudyConfig.model_validate({**configured, **overrides})
        except ValueError as error:
            raise ConfigError(f"study: {error}") from None
        unknown = [e for e in study.entries if "model" not in (params.get(e) or {})]
        if unknown:
            raise ConfigError(
                f"entries {unknown} have no '<name>.model' block in "
                "conf/base/parameters_train.yml: add one or leave them out"
            )
        device = TrainConfig.model_validate(params.get("train", {})).device
        shared = tuple(
            node.name
            for node in pipelines["compare"].nodes  # built from this session's parameters
            if not node.namespace and node.name != "compare_entries"
        )
        return _Plan(
            study=study,
            params=params,
            tracking_uri=_absolute_tracking_uri(context.mlflow.server.mlflow_tracking_uri, project),
            experiment=context.mlflow.tracking.experiment.name,
            dataset=str(params.get("dataset", "")),
            shared_nodes=shared,
            gpus=_gpus(device),
            resources={"GPU": 1} if device == "cuda" else None,
        )


def _create_study_run(client: mlflow.MlflowClient, experiment_name: str) -> str:
    """A new ``compare`` run in the project's experiment, owned by this process (if it
    dies, the next run against the store marks it KILLED)."""
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(experiment_name)
    )
    run = client.create_run(experiment_id, run_name=PARENT_RUN_NAME, tags=owner_tags())
    return run.info.run_id


def finished_cells(
    client: mlflow.MlflowClient, experiment_id: str, keys: dict[str, str]
) -> dict[str, str]:
    """namespace -> the newest FINISHED run with the cell's key, for the cells that have one."""
    found = {}
    for namespace, key in keys.items():
        runs = client.search_runs(
            [experiment_id],
            f"tags.`{CELL_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            found[namespace] = runs[0].info.run_id
    return found


def _dask_client(
    scheduler: str | None,
    processes: int,
    dashboard: str | None,
    resources: dict[str, float] | None = None,
):
    """A Dask client: of the cluster at ``scheduler``, or of a new LocalCluster of
    ``processes`` one-thread worker processes on this machine, each offering
    ``resources`` (the cells ask for them)."""
    if scheduler:
        return Client(scheduler), None
    cluster = LocalCluster(
        n_workers=processes,
        threads_per_worker=1,
        processes=True,
        dashboard_address=dashboard,
        resources=resources,
    )
    return Client(cluster), cluster


def _cell_slots(client: Client) -> int:
    """Cells the cluster runs at once: its workers' threads (a cell per thread)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return max(1, sum(worker["nthreads"] for worker in workers))


def _outcome(future: Any) -> tuple[str, CellOutcome | None]:
    """What became of a finished cell's task, in words, and its outcome if it ran."""
    if future.status == "error":
        return f"FAILED ({future.exception()})", None
    outcome: CellOutcome = future.result()
    if outcome.exit_code == 0:
        return "done", outcome
    return f"FAILED (exit {outcome.exit_code}); its log: {outcome.log} on {outcome.host}", outcome


def _run_cells(
    jobs: list[CellJob],
    scheduler: str | None,
    processes: int,
    dashboard: str | None,
    resources: dict[str, float] | None = None,
) -> dict[str, str]:
    """Run ``jobs`` on Dask; namespace -> what became of it (``done``, ``FAILED ...``,
    ``stopped ...``, ``not started ...``). Raises :class:`StudyStopped` after stopping the
    cells when the study is stopped."""
    client, cluster = _dask_client(scheduler, processes, dashboard, resources)
    outcomes: dict[str, str] = {}
    study_run_id = jobs[0].study_run_id
    try:
        logger.info(
            "study: Dask scheduler %s, %d worker(s)%s",
            client.scheduler.address,
            len(client.scheduler_info(n_workers=-1)["workers"]),
            f"; progress at {client.dashboard_link}" if scheduler or dashboard else "",
        )
        # Dask assigns a small group of tasks to workers at once, more than they have
        # threads, and a cell of minutes then waits behind another while a worker idles:
        # the scheduler gets as many cells as the cluster has threads, the next as one ends
        queued = list(jobs)
        futures: dict[Any, CellJob] = {}
        running = as_completed()

        def top_up() -> None:
            while queued and running.count() < _cell_slots(client):
                job = queued.pop(0)
                future = client.submit(
                    run_cell,
                    job,
                    key=f"{job.namespace}-{study_run_id}",
                    pure=False,
                    resources=resources,  # GPU cells go to workers that offer a GPU
                )
                futures[future] = job
                running.add(future)

        top_up()
        try:
            for future in running:
                namespace = futures[future].namespace
                outcomes[namespace], outcome = _outcome(future)
                logger.info("study: %s %s", namespace, outcomes[namespace])
                if outcome is not None and outcome.shared_step_failed and queued:
                    # the same data and parameters would fail every cell the same way
                    logger.error(
                        "study: the shared step (data split, feature extractor) failed on "
                        "%s, so no other cell is started: fix what its log says (%s), then "
                        "run the same command again",
                        outcome.host,
                        outcome.log,
                    )
                    for job in queued:
                        outcomes[job.namespace] = "not started (the shared step failed)"
                        logger.info("study: %s %s", job.namespace, outcomes[job.namespace])
                    queued.clear()
                top_up()
        except StudyStopped:
            client.cancel(list(futures))
            try:
                stopped = client.run(stop_cells, study_run_id)
            except Exception as error:  # noqa: BLE001 (workers gone: their cells got SIGTERM)
                logger.warning("study: could not reach every worker to stop its cell: %s", error)
                stopped = {}
            for worker, what in stopped.items():
                for args in what:
                    namespace = args.rsplit(" ", 1)[-1]
                    if namespace.startswith("study."):
                        logger.info(
                            "study: %s stopped on %s; its finished epochs are kept",
                            namespace,
                            worker,
                        )
                        outcomes[namespace] = "stopped"
            for job in jobs:
                if job.namespace not in outcomes:
                    logger.info("study: %s not started (the study was stopped)", job.namespace)
            raise
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
    return outcomes


def run_study(
    project: Path,
    env: str | None = None,
    workers: int | str | None = None,
    scheduler: str | None = None,
    seeds: list[int] | None = None,
    entries: list[str] | None = None,
    dashboard: str | None = ":8787",
) -> int:
    """Run the study of ``project`` as above; returns 0 when every step succeeded, 128 +
    the signal when stopped."""
    plan = _plan(project, env, workers, seeds, entries)
    study = plan.study
    client = mlflow.MlflowClient(plan.tracking_uri)
    study_run_id = _create_study_run(client, plan.experiment)
    experiment_id = client.get_run(study_run_id).info.experiment_id
    started = time.monotonic()
    try:
        cells = study_cells(study.entries, study.seeds)
        keys = {namespace: cell_key(plan.params, entry, seed) for entry, seed, namespace in cells}
        reused = finished_cells(client, experiment_id, keys)
        for namespace, run_id in reused.items():
            client.set_tag(study_run_id, REUSED_CELL_TAG_PREFIX + namespace, run_id)
        to_run = [cell for cell in cells if cell[2] not in reused]
        processes, threads = plan_workers(
            study.workers, len(to_run), os.cpu_count() or 1, plan.gpus
        )
        jobs = [
            CellJob(
                namespace=namespace,
                entry=entry,
                seed=seed,
                study_run_id=study_run_id,
                tracking_uri=plan.tracking_uri,
                dataset=plan.dataset,
                env=env,
                # on an existing cluster, the worker's own OMP_NUM_THREADS
                threads=None if scheduler else threads,
                shared_nodes=plan.shared_nodes,
            )
            for entry, seed, namespace in to_run
        ]
        logger.info(
            "study: %d cells, %d finished before (reused), %d to run; MLflow run %s",
            len(keys),
            len(reused),
            len(jobs),
            study_run_id,
        )
        if jobs:
            if not scheduler:
                logger.info("study: %d at a time with %d thread(s) each", processes, threads)
            cells_started = time.monotonic()
            outcomes = _run_cells(jobs, scheduler, processes, dashboard, plan.resources)
            hours = (time.monotonic() - cells_started) / 3600
            logger.info(
                "study: %d cells in %.1f min, %.1f cells per hour",
                len(jobs),
                hours * 60,
                len(jobs) / hours,
            )
            failed = [name for name, outcome in outcomes.items() if outcome != "done"]
            if failed:
                logger.error(
                    "study: %d cell(s) failed: %s. Run the same command again: finished "
                    "cells are not run again.",
                    len(failed),
                    ", ".join(failed),
                )
                client.set_terminated(study_run_id, "FAILED")
                return 1
        code = kedro_run(
            project,
            ["--pipelines", "study_report", *(["--env", env] if env else [])],
            {
                **os.environ,
                "MLFLOW_TRACKING_URI": plan.tracking_uri,
                "MLFLOW_RUN_ID": study_run_id,
            },
            _study_override(study.entries, study.seeds, study.baselines),
        )
        if code != 0:
            logger.error("study: the comparison failed (output above)")
            client.set_terminated(study_run_id, "FAILED")
            return 1
    except StudyStopped as stop:
        client.set_terminated(study_run_id, "KILLED")
        logger.warning("study: stopped; run the same command again to go on")
        return 128 + stop.signum
    logger.info("study: finished in %.1f min", (time.monotonic() - started) / 60)
    return 0


def _gpus(device: str) -> int:
    """GPUs the cells will train on: CUDA devices where ``train.device`` lets them."""
    return torch.cuda.device_count() if device in ("auto", "cuda") else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attn-study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", help="Kedro configuration environment (e.g. fashion_mnist)")
    parser.add_argument(
        "--workers",
        type=lambda v: v if v == "auto" else int(v),
        help="local worker processes, cells at once (default: study.workers)",
    )
    parser.add_argument(
        "--scheduler",
        default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
        help="address of a running Dask scheduler (tcp://host:8786); default: "
        "DASK_SCHEDULER_ADDRESS, else a LocalCluster on this machine",
    )
    parser.add_argument("--seeds", type=parse_seeds, help="seeds, e.g. 0-4 (default: study.seeds)")
    parser.add_argument(
        "--entries", type=parse_entries, help="entries, e.g. none,latent (default: study.entries)"
    )
    parser.add_argument(
        "--dashboard",
        default=":8787",
        help="the LocalCluster's dashboard address (default :8787; none: no dashboard)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    signal.signal(signal.SIGINT, _raise_stopped)
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        return run_study(
            Path.cwd(),
            env=args.env,
            workers=args.workers,
            scheduler=args.scheduler,
            seeds=args.seeds,
            entries=args.entries,
            dashboard=None if args.dashboard == "none" else args.dashboard,
        )
    except ConfigError as error:
        logger.error("attn-study: %s", error.message)
        return 2
    except StudyStopped as stop:  # before the study's run existed
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
