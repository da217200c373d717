"""One run at a time per project folder and namespace: the parts of data/ a run writes are
held for it, so that two runs never read and overwrite each other's files.

``fcntl.flock`` locks in ``data/.locks/``: the kernel releases them when the process ends,
however it ends (SIGKILL included), so a killed run leaves no stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

#: The outputs no namespace owns: the data split, the feature extractor, the tables.
SHARED_GROUP = "shared"


class ProjectBusyError(RuntimeError):
    """Another run is using this project folder's outputs."""


def output_groups(namespaces: set[str | None], dataset: str) -> dict[str, bool]:
    """The output groups a run of nodes in ``namespaces`` holds, each exclusively (True)
    or shared (False): its namespaces exclusively, since it writes their files; the shared
    group exclusively only when a node outside every namespace runs (namespaced nodes
    only read it). Every group is the data set's own (``mnist.none``, ``mnist.shared``)."""
    groups: dict[str, bool] = {f"{dataset}.{name}": True for name in namespaces if name}
    groups[f"{dataset}.{SHARED_GROUP}"] = None in namespaces
    return groups


class ProjectRunLock:
    """The parts of a project folder one run writes, held for that run: a second run that
    would write them (or read the shared outputs while the first writes them) is refused
    at once. Runs of different namespaces (study cells) go side by side."""

    def __init__(self, project_path: Path) -> None:
        self.folder = project_path / "data" / ".locks"
        self._handles: list[IO[str]] = []

    def acquire(self, groups: dict[str, bool] | None = None) -> None:
        """Lock ``groups`` ({name: exclusive}; default: the shared group exclusively), all
        or none."""
        self.release()  # a previous run's, ended without its release (a refused run)
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
