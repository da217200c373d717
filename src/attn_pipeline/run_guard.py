"""What lets several runs share a machine: a tracking store created once, under a lock, and
one run at a time per project folder and namespace.

Both use ``fcntl.flock`` on a lock file: the kernel releases it when the process ends, however
it ends (SIGKILL included), so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import mlflow

logger = logging.getLogger(__name__)

_SQLITE = "sqlite:///"


class ProjectBusyError(RuntimeError):
    """Another run is using this project folder's outputs."""


def sqlite_path(tracking_uri: str, project_path: Path) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (relative to the project), else None."""
    if not tracking_uri.startswith(_SQLITE):
        return None
    path = Path(tracking_uri.removeprefix(_SQLITE))
    return path if path.is_absolute() else project_path / path


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[IO[str]]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_tracking_store(tracking_uri: str, project_path: Path) -> None:
    """Create and migrate a local SQLite tracking store once, before any run opens it.

    MLflow creates and migrates a new SQLite store on first use, without a lock: two
    processes that open a new store at once both migrate it, one or both fail, and the store
    can be left half-migrated for every later run. Here the first process does it under a
    file lock beside the database and the others wait, then find it ready. Other stores (a
    tracking server, a database server) handle their own concurrency: nothing to do.
    """
    database = sqlite_path(tracking_uri, project_path)
    if database is None:
        return
    with _exclusive(database.with_name(database.name + ".lock")):
        # any query makes MLflow create and migrate the schema (a no-op once it is current)
        mlflow.MlflowClient(f"{_SQLITE}{database}").search_experiments(max_results=1)


#: The group of the outputs no namespace owns: the data split, the feature extractor, the
#: tables that combine the variants.
SHARED_GROUP = "shared"


def output_groups(namespaces: set[str | None], dataset: str) -> dict[str, bool]:
    """The output groups a run of nodes in ``namespaces`` on ``dataset`` holds, each
    exclusively (True) or shared (False): its namespaces exclusively, since it writes their
    files; the shared group exclusively when it runs a node outside every namespace, else
    shared, since its namespaced nodes read the shared outputs (a study cell run with
    --namespaces). Every group is the data set's own (``mnist.none``, ``mnist.shared``), as
    its folders are: runs on two data sets never hold each other's."""
    groups: dict[str, bool] = {f"{dataset}.{name}": True for name in namespaces if name}
    groups[f"{dataset}.{SHARED_GROUP}"] = None in namespaces
    return groups


class ProjectRunLock:
    """Hold the parts of this project folder one run writes, for that run: a second run
    that would write (or, for the shared outputs, read while the first writes) any of them
    is refused at once, instead of reading the first one's files. Runs of different
    namespaces (the study's cells as separate processes) go side by side."""

    def __init__(self, project_path: Path) -> None:
        self.folder = project_path / "data" / ".locks"
        self._handles: list[IO[str]] = []

    def acquire(self, groups: dict[str, bool] | None = None) -> None:
        """Lock ``groups`` ({name: exclusive}; default: everything, the shared group
        exclusively), all or none."""
        # locks still held by this process are a previous run's that ended without its
        # release hook (Kedro calls none when a before_pipeline_run hook fails): drop them
        self.release()
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, exclusive in sorted((groups or {SHARED_GROUP: True}).items()):
            handle = open(self.folder / f"{name}.lock", "a+")  # noqa: SIM115 (held for the run)
            try:
                fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                self.release()
                raise ProjectBusyError(
                    f"another kedro run ({holder}) is using this project folder's "
                    f"'{name}' outputs ({self.folder.parent.parent}): two runs here would read "
                    "and overwrite each other's checkpoints and reports. Wait for it to "
                    "finish, or run from a copy of the project (git worktree add ../copy), "
                    "which has its own data/ folder."
                ) from None
            if exclusive:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()}")
                handle.flush()
            self._handles.append(handle)

    def release(self) -> None:
        for handle in self._handles:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        self._handles.clear()
