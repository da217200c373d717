"""``attn-study``: the study's cells as Dask tasks, each its own ``kedro run`` and MLflow run.

The cells (entry, seed) are independent, so they go to Dask's distributed scheduler: a
``LocalCluster`` of ``study.workers`` one-thread processes on this machine, or an existing
cluster (``--scheduler``, or ``DASK_SCHEDULER_ADDRESS``). The machines share nothing but the
MLflow tracking server. This command owns the study's MLflow runs:

1. the study's run is made; every cell with a complete run of the same key (FINISHED, with
   its summary and hashes; the key: :func:`attn_pipeline.study.cell_key`), in this study or
   an earlier one, is named on it and not run again;
2. each other cell runs on a worker as ``kedro run --pipelines study --namespaces
   study.<entry>_seed<n>`` in the worker's copy of the project, after the shared step (data
   split, feature extractor) has run once in that folder. The worker makes the cell's run (a
   child of the study's) before the process starts and ends it after the process exits:
   FINISHED only when it succeeded and the cell's summary is on the tracking server;
3. the comparison (``kedro run --pipelines study_report``) reads every cell's summary from
   the tracking server and logs its tables to the study's run, FINISHED once they are there.

Ctrl-C stops the cells (their runs end KILLED, finished epochs are kept) and the study
(KILLED); the same command then goes on where it stopped.
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
from attn_pipeline.datasets.study_cells import REUSED_CELL_TAG_PREFIX, SUMMARY_ARTIFACT
from attn_pipeline.pipeline_registry import STUDY_PIPELINE
from attn_pipeline.study import CELL_KEY_TAG, cell_key, study_cells
from attn_pipeline.tracking.runs import GIVEN_RUN, mark_orphaned_runs_killed, owner_tags
from attn_pipeline.tracking.store import sqlite_path

logger = logging.getLogger("attn_pipeline.study")

#: Processes per GPU where ``study.workers`` is auto (not an optimum: docs/performance.md).
WORKERS_PER_GPU = 8
PARENT_RUN_NAME = "study"
#: Where a worker's copy of the project is, when not the worker's working directory.
PROJECT_ENV = "ATTN_PIPELINE_PROJECT"
#: The tags a cell's run must carry to be reused: what its figures were measured on.
HASH_TAGS = ("data_hash", "feature_extractor_hash")


def plan_workers(
    workers: int | str, n_cells: int, cpu_count: int, gpus: int = 0
) -> tuple[int, int]:
    """(processes at once, CPU threads each). ``auto``: one per core, at most
    :data:`WORKERS_PER_GPU` per GPU; never more processes than cells."""
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
        seeds += range(int(match[1]), int(match[2] or match[1]) + 1)
    return seeds


def parse_entries(text: str) -> list[str]:
    """``none,latent`` -> ["none", "latent"]."""
    entries = [name.strip() for name in text.split(",") if name.strip()]
    if not entries:
        raise argparse.ArgumentTypeError(f"entries {text!r}: give names such as none,latent")
    return entries


def end_run(client: mlflow.MlflowClient, run_id: str, exit_code: int | None, needs: tuple) -> str:
    """End a run a ``kedro run`` logged into, after the process exited: FINISHED when it
    succeeded and the run holds the artifacts ``needs``; else FAILED, or KILLED for a
    signal (unless the process ended it itself). Returns the status."""
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        return run.info.status
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    if exit_code == 0 and set(needs) <= artifacts:
        status = "FINISHED"
    else:
        status = "KILLED" if exit_code is None or exit_code < 0 or exit_code >= 128 else "FAILED"
    client.set_terminated(run_id, status)
    return status


# ---- on a worker -------------------------------------------------------------------------


@dataclass(frozen=True)
class CellJob:
    """What a worker needs to run one cell; the client makes it, a Dask task runs it."""

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
    status: str  # the cell run's, or "not started" (the study was stopped)
    host: str
    log: str
    shared_step_failed: bool = False  # every other cell there would fail the same way


#: The cell processes under way in this worker, and the studies stopped here.
_RUNNING: dict[subprocess.Popen, str] = {}
_STOPPED_STUDIES: set[str] = set()
_LOCK = threading.Lock()
try:
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:  # not Linux: a cell whose worker dies is marked KILLED by the next study
    _prctl = None


def _stop_with_parent() -> None:
    """In the cell's process: SIGTERM when the worker dies (its run then ends KILLED)."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def kedro_run(
    project: Path,
    args: list[str],
    env: dict[str, str],
    params: dict[str, Any],
    log: Path | None = None,
    study_run_id: str = "",
) -> int | None:
    """``kedro run args`` in ``project`` with runtime parameters ``params`` (a run
    configuration file: ``--params`` cannot give a list), output appended to ``log``; its
    exit code, None when not started because the study was stopped."""
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as config:
        yaml.safe_dump({"run": {"params": params}}, config)
    out = None
    try:
        with _LOCK:
            if study_run_id in _STOPPED_STUDIES:
                return None
            if log is not None:
                out = open(log, "a")  # noqa: SIM115 (closed once the process ends)
                out.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} kedro run {' '.join(args)}\n")
                out.flush()
            command = [sys.executable, "-m", "kedro", "run", "--config", config.name, *args]
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
    this study (once per folder), then the cell in a run made for it here."""
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
    env["MKL_NUM_THREADS"] = threads
    env.pop(GIVEN_RUN, None)
    base = ["--pipelines", STUDY_PIPELINE, *(["--env", job.env] if job.env else [])]
    params = {"study": {"entries": [job.entry], "seeds": [job.seed], "baselines": [job.entry]}}
    host = socket.gethostname()
    with open(logs / ".shared.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = logs / f".shared-{job.study_run_id}"
        if not done.exists():
            args = [*base, "--nodes", ",".join(job.shared_nodes)]
            code = kedro_run(project, args, env, params, logs / "shared.log", job.study_run_id)
            if code != 0:
                status = "not started" if code is None else f"FAILED (exit {code})"
                return CellOutcome(job.namespace, status, host, str(logs / "shared.log"), True)
            done.touch()
    client = mlflow.MlflowClient(job.tracking_uri)
    tags = {"mlflow.parentRunId": job.study_run_id, "namespace": job.namespace}
    tags |= {CELL_KEY_TAG: job.key, "dataset": job.dataset, **owner_tags()}
    experiment = client.get_run(job.study_run_id).info.experiment_id
    run_id = client.create_run(experiment, run_name=job.namespace, tags=tags).info.run_id
    log = logs / f"{job.namespace}.log"
    args = [*base, "--namespaces", job.namespace]
    try:
        code = kedro_run(project, args, {**env, GIVEN_RUN: run_id}, params, log, job.study_run_id)
    finally:  # stopped or not, the run ends with the process
        status = end_run(client, run_id, locals().get("code"), (SUMMARY_ARTIFACT,))
    return CellOutcome(job.namespace, status if code is not None else "not started", host, str(log))


def stop_cells(study_run_id: str) -> list[str]:
    """On a worker: start no other cell of the study, stop the running ones (SIGTERM: each
    ends its run KILLED and keeps its saved epochs) and wait for them. Returns them."""
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


@dataclass
class _Plan:
    study: StudyConfig
    params: dict[str, Any]
    tracking_uri: str
    experiment: str
    dataset: str
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
            overrides["baselines"] = [b for b in baselines if b in overrides["entries"]]
            if not overrides["baselines"]:
                raise ConfigError(
                    f"--entries {','.join(overrides['entries'])} has none of the study's "
                    f"baselines {baselines}: add one (every entry is paired with a baseline)"
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
        uri = context.mlflow.server.mlflow_tracking_uri
        database = sqlite_path(uri, project)  # every worker opens a local store by its path
        return _Plan(
            study=study,
            params=params,
            tracking_uri=uri if database is None else f"sqlite:///{database}",
            experiment=context.mlflow.tracking.experiment.name,
            dataset=str(params.get("dataset", "")),
            shared_nodes=tuple(n.name for n in pipelines[STUDY_PIPELINE].nodes if not n.namespace),
            device=TrainConfig.model_validate(params.get("train", {})).device,
        )


def complete_cells(
    client: mlflow.MlflowClient, experiment_id: str, keys: dict[str, str]
) -> dict[str, str]:
    """namespace -> the newest run with the cell's key that is FINISHED and holds what the
    comparison needs (its summary, the hashes of its data and extractor)."""
    found = {}
    for namespace, key in keys.items():
        for run in client.search_runs(
            [experiment_id],
            f"tags.`{CELL_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        ):
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
            lacks = [t for t in HASH_TAGS if t not in run.data.tags]
            lacks += [] if SUMMARY_ARTIFACT in artifacts else [SUMMARY_ARTIFACT]
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


def _run_cells(
    jobs: list[CellJob], client: Client, resources: dict | None
) -> dict[str, CellOutcome]:
    """Run ``jobs`` on Dask; namespace -> its outcome. Raises :class:`StudyStopped` after
    stopping the cells when the study is stopped."""
    outcomes: dict[str, CellOutcome] = {}
    study_run_id = jobs[0].study_run_id
    # Dask hands workers more tasks than they have threads, and a cell of minutes would wait
    # behind another while a worker idles: as many cells as threads, the next as one ends
    queued, futures, running = list(jobs), {}, as_completed()

    def top_up() -> None:
        slots = sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
        while queued and running.count() < max(1, slots):
            job = queued.pop(0)
            future = client.submit(
                run_cell,
                job,
                key=f"{job.namespace}-{study_run_id}",
                pure=False,
                resources=resources,
            )
            futures[future] = job
            running.add(future)

    started = time.monotonic()
    top_up()
    try:
        for future in running:
            job = futures[future]
            if future.status == "error":
                outcome = CellOutcome(job.namespace, f"FAILED ({future.exception()})", "?", "")
            else:
                outcome = future.result()
            outcomes[job.namespace] = outcome
            said = f"FAILED; its log: {outcome.log} on {outcome.host}"
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
                    outcomes[other.namespace] = CellOutcome(other.namespace, "not started", "", "")
                queued.clear()
            top_up()
            done, left = len(outcomes), len(queued) + running.count()
            rate = (time.monotonic() - started) / done
            logger.info(
                "study: %d done, %d running, %d waiting; about %.0f min left",
                done,
                running.count(),
                len(queued),
                rate * left / 60,
            )
    except StudyStopped:
        client.cancel(list(futures))
        try:
            stopped = client.run(stop_cells, study_run_id)
        except Exception as error:  # noqa: BLE001 (workers gone: their cells got SIGTERM)
            logger.warning("study: could not reach every worker to stop its cell: %s", error)
            stopped = {}
        for worker, namespaces in stopped.items():
            for namespace in namespaces:
                logger.info(
                    "study: %s stopped on %s; its finished epochs are kept", namespace, worker
                )
                outcomes[namespace] = CellOutcome(namespace, "KILLED", worker, "")
        for job in jobs:
            if job.namespace not in outcomes:
                logger.info("study: %s not started (the study was stopped)", job.namespace)
        raise
    return outcomes


def run_study(
    project: Path,
    env: str | None = None,
    scheduler: str | None = None,
    dashboard: str | None = ":8787",
    **overrides: Any,
) -> int:
    """Run the study of ``project`` as above; 0 when every step succeeded, 1 when one
    failed, 128 + the signal when stopped."""
    plan = _plan(project, env, {k: v for k, v in overrides.items() if v is not None})
    study = plan.study
    mlflow.set_tracking_uri(plan.tracking_uri)
    client = mlflow.MlflowClient(plan.tracking_uri)
    experiment = client.get_experiment_by_name(plan.experiment)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(plan.experiment)
    )
    mark_orphaned_runs_killed(experiment_id)
    study_run_id = client.create_run(
        experiment_id, run_name=PARENT_RUN_NAME, tags=owner_tags()
    ).info.run_id
    started = time.monotonic()
    try:
        cells = study_cells(study.entries, study.seeds)
        keys = {namespace: cell_key(plan.params, entry, seed) for entry, seed, namespace in cells}
        reused = complete_cells(client, experiment_id, keys)
        for namespace, run_id in reused.items():
            client.set_tag(study_run_id, REUSED_CELL_TAG_PREFIX + namespace, run_id)
        to_run = [cell for cell in cells if cell[2] not in reused]
        gpus = torch.cuda.device_count() if plan.device in ("auto", "cuda") else 0
        processes, threads = plan_workers(study.workers, len(to_run), os.cpu_count() or 1, gpus)
        jobs = [
            CellJob(
                namespace,
                entry,
                seed,
                keys[namespace],
                study_run_id,
                plan.tracking_uri,
                plan.dataset,
                env,
                None if scheduler else threads,
                plan.shared_nodes,
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
            if scheduler:
                dask, cluster = Client(scheduler), None
            else:
                logger.info("study: %d at a time with %d thread(s) each", processes, threads)
                resources = {"GPU": 1} if plan.device == "cuda" else None
                cluster = LocalCluster(
                    n_workers=processes,
                    threads_per_worker=1,
                    dashboard_address=dashboard,
                    resources=resources,
                )
                dask = Client(cluster)
            logger.info(
                "study: Dask scheduler %s; dashboard %s",
                dask.scheduler.address,
                dask.dashboard_link,
            )
            try:
                outcomes = _run_cells(jobs, dask, {"GPU": 1} if plan.device == "cuda" else None)
            finally:
                with contextlib.suppress(Exception):
                    dask.close()
                    if cluster is not None:
                        cluster.close()
            failed = [name for name, outcome in outcomes.items() if outcome.status != "FINISHED"]
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
            {**os.environ, "MLFLOW_TRACKING_URI": plan.tracking_uri, GIVEN_RUN: study_run_id},
            {
                "study": {
                    "entries": study.entries,
                    "seeds": study.seeds,
                    "baselines": study.baselines,
                }
            },
        )
        if end_run(client, study_run_id, code, ("comparison.csv",)) != "FINISHED":
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
            scheduler=args.scheduler,
            dashboard=None if args.dashboard == "none" else args.dashboard,
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
