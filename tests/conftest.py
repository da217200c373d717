"""Shared fixtures: tiny IDX files made on the fly, never the real data sets."""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# Under pytest-xdist (make test: a worker per core) each worker and the processes its tests
# start use one thread: two workers of two threads each would fight over two cores. Set
# before torch is first imported (it reads them once).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from attn_pipeline.data.idx import encode_idx

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")

#: The project's folder (this file is tests/conftest.py).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: (C, H, W) of MNIST's images, for tests that build models without data.
MNIST_SHAPE = (1, 28, 28)

#: Parameters for a real `kedro run` on the tiny data, in seconds rather than minutes.
TINY_RUN = {
    "data_prep": {"val_size": 40, "test_subset_size": 40},
    "train": {"epochs": 2, "batch_size": 50},
    "generate": {"n_samples": 16, "n_reconstructions": 8, "n_interpolations": 2},
    "evaluate": {
        "n_samples": 40,
        "nll_samples": 5,
        "nll_images": 30,
        "kid_subsets": 5,
        "kid_subset_size": 20,
    },
    # trained on the tiny data (the shipped reference is for the real data sets)
    "feature_extractor": {
        "epochs": 2,
        "batch_size": 50,
        "min_test_accuracy": 0.5,
        "use_reference": False,
    },
}


def as_cli_params(params: dict, prefix: str = "") -> str:
    """``{"train": {"epochs": 2}}`` -> ``"train.epochs=2"``: nested parameters as ``kedro run
    --params`` takes them."""
    items = []
    for key, value in params.items():
        if isinstance(value, dict):
            items.append(as_cli_params(value, f"{prefix}{key}."))
        else:
            items.append(
                f"{prefix}{key}={str(value).lower() if isinstance(value, bool) else value}"
            )
    return ",".join(items)


RAW_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def digit_like_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images of bright bars whose position depends on a label 0-9."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row = 4 + 2 * int(label)
        images[i, row : row + 3, 6:22] = 255
        images[i] = np.clip(images[i] + rng.integers(0, 40, size=(28, 28)), 0, 255)
    return images, labels


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    data = encode_idx(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_raw_dataset(folder: Path, n_train: int = 240, n_test: int = 60) -> dict[str, Path]:
    """The four MNIST-named files with tiny synthetic content in ``folder``."""
    train_images, train_labels = digit_like_images(n_train, seed=0)
    test_images, test_labels = digit_like_images(n_test, seed=1)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    return {key: write_idx(folder / RAW_NAMES[key], arrays[key]) for key in arrays}


#: The files whose tests take longest (a study each, or three trainings), started first.
LONGEST_FIRST = (
    "tests/study/test_study_processes.py",
    "tests/runs/test_run_truth.py",
    "tests/training/test_resume.py",
    "tests/project/test_documented_commands.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with real-process tests first, then those with in-process pipelines, then the
    unit tests: spread over workers (make test), the longest start first and none is left
    running alone at the end. A file's tests stay together (they share module fixtures)."""
    tier = {"process": 0, "pipeline": 1}
    first: dict[str, int] = {}
    for item in items:
        rank = min((tier.get(m.name, 2) for m in item.iter_markers()), default=2)
        file = item.nodeid.split("::")[0]
        first[file] = min(first.get(file, 2), rank)
    longest = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(
        key=lambda item: (
            first[item.nodeid.split("::")[0]],
            longest.get(item.nodeid.split("::")[0], 99),
        )
    )


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test begins without ``MLFLOW_EXPERIMENT_ID`` and ends with the environment it
    began with: ``mlflow.set_experiment`` (called by kedro-mlflow in an in-process session,
    module fixtures included) exports it, and a later test's subprocess would look that
    experiment up in a store of its own where it does not exist."""
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def raw_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    write_raw_dataset(folder)
    return folder


@functools.cache
def migrated_store() -> Path:
    """An empty MLflow SQLite store with its schema made, made once per test process:
    making the schema costs seconds, which each project copy would otherwise pay."""
    import mlflow  # noqa: PLC0415 (only the tests that copy a project need it)

    path = Path(tempfile.mkdtemp(prefix="migrated-store-")) / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def project_copy(
    root: Path, parameters: dict | None = None, n_train: int = 120, n_test: int = 20
) -> Path:
    """A project folder at ``root`` as a fresh clone has it after the fetch: this project's
    conf (conf/local holding ``parameters``, if any), tiny raw MNIST-like data of
    ``n_train`` and ``n_test`` images and an empty store in mlruns/ (tests of a brand-new
    store make their own); the package is this environment's."""
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    if parameters:
        (root / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(parameters))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()
    write_raw_dataset(root / "data" / "01_raw" / "mnist", n_train=n_train, n_test=n_test)
    (root / "mlruns").mkdir()
    shutil.copy(migrated_store(), root / "mlruns" / "mlflow.db")
    return root


def free_port() -> int:
    """A free TCP port on the loopback interface, for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(
    url: str, server: subprocess.Popen, log: Path | None = None, seconds: float = 180
) -> None:
    """Return once ``url`` answers; fail if ``server`` exits first (with the end of its
    ``log``) or after ``seconds`` (a safety net against a hang, not a line-up)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):  # noqa: S310 (loopback)
                return
        except OSError:
            said = log.read_text()[-3000:] if log is not None and log.exists() else ""
            assert server.poll() is None, f"the server of {url} exited {server.returncode}\n{said}"
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.5)


def chromium() -> str:
    """Debian's chromium, for the browser tests. `make test` installs it where it can; where
    it is missing the test is skipped, and under CI (``CI=true``) it fails instead."""
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if found is None:
        message = (
            "needs Debian's chromium (`make test` installs it as root; apt-get install chromium)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


#: What each tier may do. A unit test (no marker) starts no process of the stack and makes
#: no Kedro session; `pipeline` tests run pipelines in this process; `process` tests start
#: processes: an interpreter, this environment's programs (kedro, attn-study, mlflow, dask)
#: or a browser. System tools libraries call (git, ldconfig, mount) are every tier's.
BIN = Path(sys.executable).parent


def _of_the_stack(program: str) -> bool:
    path = Path(shutil.which(program) or program)
    name = path.name
    return path.parent == BIN or name.startswith("python") or "chrom" in name


@pytest.fixture(autouse=True)
def _tier_matches_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Fail a test that does more than its marker says, so that `make test-fast` (the unit
    tier) stays fast and the markers stay true."""
    markers = {marker.name for marker in request.node.iter_markers()}
    if "process" in markers:
        yield
        return
    start = subprocess.Popen.__init__

    def refused(self, args, *rest, **kwargs):  # noqa: ANN001 (Popen's own signature)
        program = args[0] if isinstance(args, list | tuple) else str(args).split()[0]
        if _of_the_stack(str(program)):
            pytest.fail(f"this test starts a process ({program}): mark it `process`")
        start(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", refused)
    if "pipeline" not in markers:
        from kedro.framework.session import KedroSession  # noqa: PLC0415

        def no_session(*args, **kwargs):
            pytest.fail("this test makes a Kedro session: mark it `pipeline`")

        monkeypatch.setattr(KedroSession, "create", no_session)
    yield
