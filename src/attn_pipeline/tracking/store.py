"""A local SQLite tracking store shared by processes: created and migrated once under a
lock, and locked for the few queries that must not interleave (registering a model).

An ``fcntl.flock`` lock: the kernel releases it when the process ends, however it ends
(SIGKILL included), so a killed run leaves no stale lock behind.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

_SQLITE = "sqlite:///"


def sqlite_path(tracking_uri: str, project_path: Path) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the project), else None."""
    if not tracking_uri.startswith(_SQLITE):
        return None
    path = Path(tracking_uri.removeprefix(_SQLITE))
    return path if path.is_absolute() else project_path / path


@contextmanager
def store_lock(tracking_uri: str, project_path: Path) -> Iterator[None]:
    """Exclusive use of a local SQLite store for a few queries (a no-op for a server,
    which serialises its own writes)."""
    database = sqlite_path(tracking_uri, project_path)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_tracking_store(tracking_uri: str, project_path: Path) -> None:
    """Create and migrate a new SQLite store once, before any run opens it: MLflow migrates
    a new store on first use without a lock, and two processes doing it at once fail or
    leave it half-migrated. The first process migrates it; the others wait, then find it
    ready."""
    database = sqlite_path(tracking_uri, project_path)
    if database is not None:
        with store_lock(tracking_uri, project_path):
            mlflow.MlflowClient(f"{_SQLITE}{database}").search_experiments(max_results=1)
