"""``attn-study``: the study's cells as Dask tasks, each its own ``kedro run`` and MLflow run.

The cells (entry, seed) go to Dask's scheduler: a ``LocalCluster`` of ``study.workers``
one-thread processes here, or a cluster (``--scheduler``), whose machines share nothing
but the MLflow tracking server. This command owns the study's runs:

1. the study's run is made; a cell with a complete run of its key (FINISHED, with its
   summary and hashes; :func:`attn_pipeline.spec.cells.cell_key`), from any study, is reused;
2. each other cell runs on a worker as ``kedro run --pipelines study --namespaces
   study.<entry>_seed<n>`` after the shared step (data split, feature extractor) has run
   once in the worker's folder. The worker makes the cell's run before the process starts
   and ends it after: FINISHED only if it exited 0 and the summary is on the server;
3. the comparison (``kedro run --pipelines study_report``) reads the cells' summaries from
   the server and logs its tables to the study's run, FINISHED once they are there.

Ctrl-C stops the cells (their runs end KILLED, saved epochs are kept) and the study; the
same command then goes on where it stopped.
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

from attn_pipeline.pipelines import STUDY_PIPELINE
from attn_pipeline.spec.cells import CELL_KEY_TAG, cell_key, study_cells
from attn_pipeline.spec.config import ConfigError, StudyConfig, TrainConfig
from attn_pipeline.study.tracked_cells import REUSED_CELL_TAG_PREFIX, SUMMARY_ARTIFACT
from attn_pipeline.tracking.runs import GIVEN_RUN, mark_orphaned_runs_killed, owner_tags
from attn_pipeline.tracking.store import sqlite_path

logger = logging.getLogger("attn_pipeline.study")

#: Processes per GPU where ``study.workers`` is auto (not an optimum: docs/performance.md).
WORKERS_PER_GPU = 8
#: Where a worker's copy of the project is, when not the worker's working directory.
PROJECT_ENV = "ATTN_PIPELINE_PROJECT"
#: What a cell's run must carry to be reused: what its figures were measured on.
HASH_TAGS = ("data_hash", "feature_extractor_hash")


def plan_workers(workers: int | str, n_cells: int, cpu_count: int, gpus: int = 0) -> tuple:
    """(processes at once, CPU threads each). ``auto``: one per core, at most
    :data:`WORKERS_PER_GPU` per GPU; never more processes than cells."""
    auto = cpu_count if gpus == 0 else min(cpu_count, WORKERS_PER_GPU * gpus)
    processes = max(1, min(auto if workers == "auto" else int(workers), n_cells))
    return processes, max(1, cpu_count // processes)


def parse_seeds(text: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``0,2,7-8`` -> [0, 2, 7, 8]."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or int(match[2] or match[1]) < int(match[1]):
            raise argparse.ArgumentTypeError(f"seeds {text!r}: give ranges such as 0-4 or 0,2,7-8")
        seeds += range(int(match[1]), int(match[2] or match[1]) + 1)
    return seeds


def parse_entries(text: str) -> list[str]:
    """``none,latent`` -> ["none", "latent"]."""
    if not (entries := [name.strip() for name in text.split(",") if name.strip()]):
        raise argparse.ArgumentTypeError(f"entries {text!r}: give names such as none,latent")
    return entries


def end_run(client: mlflow.MlflowClient, run_id: str, exit_code: int | None, needs: str) -> str:
    """End a run a ``kedro run`` logged into, once it exited: FINISHED if it exited 0 and
    the run holds the artifact ``needs``, else KILLED for a signal or FAILED (unless the
    process ended it itself). Returns the run's status."""
    if (status := client.get_run(run_id).info.status) != "RUNNING":
        return status
    if exit_code == 0 and needs in {a.path for a in client.list_artifacts(run_id)}:
        status = "FINISHED"
    else:
        status = "FAILED" if exit_code is not None and 0 < exit_code < 128 else "KILLED"
    client.set_terminated(run_id, status)
    return status


# ---- on a worker -------------------------------------------------------------------------


@dataclass(frozen=True)
class CellJob:
    """What a worker needs to run one cell: the client makes it, a Dask task runs it."""

    namespace: str
    entry: str
    seed: int
    key: str
    study_run_id: str
    tracking_uri: str
    dataset: str
    env: str | None
    threads: int | None  # None: the worker's OMP_NUM_THREADS (1 under Dask)
    shared_nodes: tuple[str, ...]  # the shared step: data split, feature extractor


@dataclass(frozen=True)
class CellOutcome:
    namespace: str
    status: str  # the cell run's
    host: str
    log: str
    shared_step_failed: bool = False  # every other cell there would fail the same way


_RUNNING: dict[subprocess.Popen, str] = {}  # this worker's cell processes -> namespace
_LOCK = threading.Lock()
with contextlib.suppress(OSError):  # Linux: the cell's process dies with its worker
    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl


def _stop_with_parent() -> None:
    """In the cell's process: SIGTERM when the worker dies (its run then ends KILLED)."""
    if "_PRCTL" in globals():
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def kedro_run(project: Path, args: list[str], env: dict, params: dict, log: Path | None = None):
    """``kedro run args`` in ``project`` with runtime parameters ``params`` (a run
    configuration: ``--params`` cannot give a list), output appended to ``log``; its exit
    code. Stopping the caller stops the process."""
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as config:
        yaml.safe_dump({"run": {"params": params}}, config)
    out = open(log, "a") if log else None  # noqa: SIM115 (closed once the process ends)
    try:
        if out:
            out.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} kedro run {' '.join(args)}\n")
            out.flush()
        command = [sys.executable, "-m", "kedro", "run", "--config", config.name, *args]
        with _LOCK:
            process = subprocess.Popen(
                command,
                cwd=project,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_stop_with_parent,  # noqa: PLW1509 (prctl alone: takes no lock)
            )
            _RUNNING[process] = args[-1]
        try:
            return process.wait()
        except BaseException:
            process.terminate()
            process.wait()
            raise
        finally:
            with _LOCK:
                _RUNNING.pop(process, None)
    finally:
        os.unlink(config.name)
        if out:
            out.close()


def run_cell(job: CellJob) -> CellOutcome:
    """One cell on this worker: the shared step first if this folder has not made it for
    this study, then the cell, in a run made for it here and ended once it exits."""
    project = Path(os.environ.get(PROJECT_ENV) or os.getcwd())
    if not (project / "conf").is_dir() or not (project / "pyproject.toml").is_file():
        raise RuntimeError(
            f"the Dask worker on {socket.gethostname()} runs in {project}, which is not a copy "
            f"of the project: start `dask worker` in the project's folder, or set {PROJECT_ENV}"
        )
    logs = project / "data" / "08_reporting" / job.dataset / "study" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = str(job.threads or os.environ.get("OMP_NUM_THREADS", "1"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": job.tracking_uri, "OMP_NUM_THREADS": threads}
    env |= {"MKL_NUM_THREADS": threads, GIVEN_RUN: ""}
    base = ["--pipelines", STUDY_PIPELINE, *(["--env", job.env] if job.env else [])]
    params = {"study": {"entries": [job.entry], "seeds": [job.seed], "baselines": [job.entry]}}
    host = socket.gethostname()
    with open(logs / ".shared.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (done := logs / f".shared-{job.study_run_id}").exists():
            args = [*base, "--nodes", ",".join(job.shared_nodes)]
            if (code := kedro_run(project, args, env, params, logs / "shared.log")) != 0:
                return CellOutcome(
                    job.namespace,
                    f"FAILED in the shared step (exit {code})",
                    host,
                    str(logs / "shared.log"),
                    True,
                )
            done.touch()
    client = mlflow.MlflowClient(job.tracking_uri)
    tags = {
        "mlflow.parentRunId": job.study_run_id,
        "namespace": job.namespace,
        "dataset": job.dataset,
    }
    experiment = client.get_run(job.study_run_id).info.experiment_id
    tags |= {CELL_KEY_TAG: job.key, **owner_tags()}
    run_id = client.create_run(experiment, run_name=job.namespace, tags=tags).info.run_id
    log, code = logs / f"{job.namespace}.log", None
    try:
        args = [*base, "--namespaces", job.namespace]
        code = kedro_run(project, args, {**env, GIVEN_RUN: run_id}, params, log)
    finally:  # stopped or not, the run ends with its process
        status = end_run(client, run_id, code, SUMMARY_ARTIFACT)
    return CellOutcome(job.namespace, status, host, str(log))


def stop_cells() -> list[str]:
    """On a worker: stop its cells (SIGTERM: each ends its run KILLED and keeps its saved
    epochs) and wait for them to end. Returns their namespaces."""
    with _LOCK:
        running = dict(_RUNNING)
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=120)
    return [namespace for namespace in running.values() if namespace.startswith("study.")]


# ---- on the client -------------------------------------------------------------------------


class StudyStopped(Exception):  # noqa: N818 (a stop, not an error)
    """SIGINT or SIGTERM reached the study."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    for each in (signal.SIGINT, signal.SIGTERM):  # once: stopping the cells is not cut short
        signal.signal(each, signal.SIG_IGN)
    raise StudyStopped(signum)


@dataclass
class _Plan:
    study: StudyConfig
    params: dict[str, Any]
    tracking_uri: str
    experiment: str
    shared_nodes: tuple[str, ...]
    device: str


def _plan(project: Path, env: str | None, overrides: dict[str, Any]) -> _Plan:
    """The study as configured and overridden on the command line, checked before anything
    runs: a bad value stops it with one line naming the fix."""
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        context = session.load_context()
        params = context.config_loader["parameters"]  # plain values (context.params: typed)
        configured = dict(params.get("study", {}))
        if "entries" in overrides:  # the configured baselines among the entries
            baselines = list(configured.get("baselines") or [])
            if not (kept := [b for b in baselines if b in overrides["entries"]]):
                raise ConfigError(
                    f"--entries {','.join(overrides['entries'])} has none of the study's "
                    f"baselines {baselines}: add one (every entry is paired with a baseline)"
                )
            overrides["baselines"] = kept
        try:
            study = StudyConfig.model_validate({**configured, **overrides})
        except ValueError as error:
            raise ConfigError(f"study: {error}") from None
        if unknown := [e for e in study.entries if "model" not in (params.get(e) or {})]:
            raise ConfigError(
                f"entries {unknown} have no '<name>.model' block in "
                "conf/base/parameters_train.yml: add one or leave them out"
            )
        uri = context.mlflow.server.mlflow_tracking_uri
        database = sqlite_path(uri, project)  # every worker opens a local store by its path
        shared = tuple(n.name for n in pipelines[STUDY_PIPELINE].nodes if not n.namespace)
        return _Plan(
            study,
            params,
            uri if database is None else f"sqlite:///{database}",
            context.mlflow.tracking.experiment.name,
            shared,
            TrainConfig.model_validate(params.get("train", {})).device,
        )


def complete_cells(client: mlflow.MlflowClient, experiment_id: str, keys: dict) -> dict:
    """namespace -> the newest run of the cell's key that is FINISHED and holds what the
    comparison needs (its summary, the hashes of its data and extractor)."""
    found = {}
    for namespace, key in keys.items():
        query = f"tags.`{CELL_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'"
        for run in client.search_runs([experiment_id], query, order_by=["start_time DESC"]):
            lacks = [tag for tag in HASH_TAGS if tag not in run.data.tags]
            if SUMMARY_ARTIFACT not in {a.path for a in client.list_artifacts(run.info.run_id)}:
                lacks.append(SUMMARY_ARTIFACT)
            if not lacks:
                found[namespace] = run.info.run_id
                break
            logger.warning(
                "study: %s: run %s is FINISHED but lacks %s: not reused",
                namespace,
                run.info.run_id,
                ", ".join(lacks),
            )
    return found


def _run_cells(jobs: list[CellJob], client: Client, resources: dict | None) -> list[str]:
    """Run ``jobs`` on Dask; the namespaces of those that did not finish. Raises
    :class:`StudyStopped` once the cells are stopped, when the study is stopped."""
    # Dask would hand a worker more cells than it has threads, and a cell of minutes then
    # waits while another worker idles: as many cells as threads, the next as one ends
    queued, futures, running = list(jobs), {}, as_completed()
    failed, finished, started = [], set(), time.monotonic()

    def top_up() -> None:
        slots = sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
        while queued and running.count() < max(1, slots):
            job = queued.pop(0)
            key = f"{job.namespace}-{job.study_run_id}"
            futures[
                future := client.submit(run_cell, job, key=key, pure=False, resources=resources)
            ] = job
            running.add(future)

    top_up()
    try:
        for done, future in enumerate(running, start=1):
            job = futures[future]
            finished.add(job.namespace)
            if future.status == "error":
                outcome = CellOutcome(job.namespace, f"FAILED ({future.exception()})", "?", "?")
            else:
                outcome = future.result()
            if outcome.status != "FINISHED":
                failed.append(job.namespace)
                said = f"ended {outcome.status}; its log: {outcome.log} on {outcome.host}"
            logger.info(
                "study: %s %s", job.namespace, "done" if outcome.status == "FINISHED" else said
            )
            if outcome.shared_step_failed and queued:
                logger.error(
                    "study: the shared step (data split, feature extractor) failed on %s, so no "
                    "other cell is started: fix what its log says (%s), then run the same "
                    "command again",
                    outcome.host,
                    outcome.log,
                )
                for other in queued:
                    logger.info("study: %s not started (the shared step failed)", other.namespace)
                failed += [other.namespace for other in queued]
                queued.clear()
            top_up()
            left = len(queued) + running.count()
            minutes = (time.monotonic() - started) / done * left / 60
            logger.info(
                "study: %d done, %d running, %d waiting; about %.0f min left",
                done,
                running.count(),
                len(queued),
                minutes,
            )
    except StudyStopped:
        client.cancel(list(futures))
        try:
            stopped = client.run(stop_cells)
        except Exception as error:  # noqa: BLE001 (workers gone: their cells got SIGTERM)
            logger.warning("study: could not reach every worker to stop its cell: %s", error)
            stopped = {}
        for worker, namespaces in stopped.items():
            for namespace in namespaces:
                logger.info("study: %s stopped on %s; its saved epochs are kept", namespace, worker)
        stopped_cells = {n for namespaces in stopped.values() for n in namespaces}
        for job in jobs:
            if job.namespace not in stopped_cells | finished:
                logger.info("study: %s not started (the study was stopped)", job.namespace)
        raise
    return failed


def run_study(
    project: Path,
    env: str | None = None,
    scheduler: str | None = None,
    dashboard: str | None = ":8787",
    **overrides: Any,
) -> int:
    """Run the study of ``project`` as above: 0 when every step succeeded, 1 when one
    failed, 128 + the signal when stopped."""
    plan = _plan(project, env, {k: v for k, v in overrides.items() if v is not None})
    study, uri = plan.study, plan.tracking_uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(plan.experiment)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(plan.experiment)
    )
    mark_orphaned_runs_killed(experiment_id)
    study_run_id = client.create_run(experiment_id, run_name="study", tags=owner_tags()).info.run_id
    started, dataset = time.monotonic(), str(plan.params.get("dataset", ""))
    try:
        cells = study_cells(study.entries, study.seeds)
        keys = {namespace: cell_key(plan.params, entry, seed) for entry, seed, namespace in cells}
        reused = complete_cells(client, experiment_id, keys)
        for namespace, run_id in reused.items():
            client.set_tag(study_run_id, REUSED_CELL_TAG_PREFIX + namespace, run_id)
        gpus = torch.cuda.device_count() if plan.device in ("auto", "cuda") else 0
        to_run = [cell for cell in cells if cell[2] not in reused]
        processes, threads = plan_workers(study.workers, len(to_run), os.cpu_count() or 1, gpus)
        jobs = [
            CellJob(
                namespace,
                entry,
                seed,
                keys[namespace],
                study_run_id,
                uri,
                dataset,
                env,
                None if scheduler else threads,
                plan.shared_nodes,
            )
            for entry, seed, namespace in to_run
        ]
        logger.info(
            "study: %d cell%s, %d finished before (reused), %d to run; MLflow run %s",
            len(keys),
            "" if len(keys) == 1 else "s",
            len(reused),
            len(jobs),
            study_run_id,
        )
        if jobs:
            resources = {"GPU": 1} if plan.device == "cuda" else None  # GPU cells on GPU workers
            cluster = None
            if not scheduler:
                logger.info("study: %d at a time with %d thread(s) each", processes, threads)
                cluster = LocalCluster(
                    n_workers=processes,
                    threads_per_worker=1,
                    dashboard_address=dashboard,
                    resources=resources,
                )
            dask = Client(scheduler or cluster)
            logger.info(
                "study: Dask scheduler %s, dashboard %s",
                dask.scheduler.address,
                dask.dashboard_link,
            )
            try:
                failed = _run_cells(jobs, dask, resources)
            finally:
                for closing in (dask, cluster):
                    with contextlib.suppress(Exception):
                        closing and closing.close()
            if failed:
                logger.error(
                    "study: %d cell(s) failed: %s. Run the same command again: finished cells "
                    "are not run again.",
                    len(failed),
                    ", ".join(failed),
                )
                client.set_terminated(study_run_id, "FAILED")
                return 1
        env_option = ["--env", env] if env else []
        report_env = {**os.environ, "MLFLOW_TRACKING_URI": uri, GIVEN_RUN: study_run_id}
        params = {
            "study": {"entries": study.entries, "seeds": study.seeds, "baselines": study.baselines}
        }
        code = kedro_run(project, ["--pipelines", "study_report", *env_option], report_env, params)
        if end_run(client, study_run_id, code, "comparison.csv") != "FINISHED":
            logger.error("study: the comparison failed (output above)")
            return 1
    except StudyStopped as stop:
        client.set_terminated(study_run_id, "KILLED")
        logger.warning("study: stopped; run the same command again to go on")
        return 128 + stop.signum
    logger.info("study: finished in %.1f min", (time.monotonic() - started) / 60)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attn-study", description=__doc__.split("\n\n")[0])
    arg = parser.add_argument
    arg("--env", help="Kedro configuration environment (e.g. fashion_mnist)")
    arg(
        "--workers",
        type=lambda v: v if v == "auto" else int(v),
        help="local worker processes, cells at once (default: study.workers)",
    )
    arg(
        "--scheduler",
        default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
        help="a running Dask scheduler (tcp://host:8786; default: DASK_SCHEDULER_ADDRESS, "
        "else a LocalCluster here)",
    )
    arg("--seeds", type=parse_seeds, help="seeds, e.g. 0-4 (default: study.seeds)")
    arg("--entries", type=parse_entries, help="entries, e.g. none,latent (default: study.entries)")
    arg("--dashboard", default=":8787", help="the LocalCluster's dashboard (none: no dashboard)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    signal.signal(signal.SIGINT, _raise_stopped)
    signal.signal(signal.SIGTERM, _raise_stopped)
    dashboard = None if args.dashboard == "none" else args.dashboard
    try:
        return run_study(
            Path.cwd(),
            args.env,
            args.scheduler,
            dashboard,
            workers=args.workers,
            seeds=args.seeds,
            entries=args.entries,
        )
    except ConfigError as error:
        logger.error("attn-study: %s", error.message)
        return 2
    except StudyStopped as stop:  # before the study's run existed
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
