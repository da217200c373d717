"""The packaged project runs as Kedro documents it: `kedro package`, the wheel installed on
its own, `python -m attn_pipeline --conf-source=<conf tarball>` in a folder holding nothing
of the checkout. It reads its parameters from the tarball, uses the reference feature
extractor shipped inside the wheel, and sends no usage data without consent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, TINY_RUN, as_cli_params, write_raw_dataset

#: one worker runs this file: its tests share a module fixture (make test: --dist loadgroup)
pytestmark = [pytest.mark.process, pytest.mark.xdist_group("packaged_project")]

#: The hash of the reference MNIST extractor shipped inside the package.
REFERENCE_MNIST_HASH = json.loads(
    (PROJECT_ROOT / "src/attn_pipeline/reference/feature_extractor/mnist.json").read_text()
)["hash"]

#: Imported first by the packaged run's interpreter: every HTTP request is written down
#: and refused, so the test sees anything that tries to leave the machine.
RECORD_REQUESTS = """
import os, requests
def _refuse(self, method, url, *args, **kwargs):
    with open(os.environ["REQUESTS_LOG"], "a") as log:
        log.write(f"{method} {url}\\n")
    raise requests.exceptions.ConnectionError("refused by the test")
requests.Session.request = _refuse
"""


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(folder the wheel is installed into, the conf tarball), from `kedro package` run in
    a copy of the project's sources."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(PROJECT_ROOT / "src", source / "src", ignore=ignore)
    # `kedro package` leaves conf/local's parameter files out of the tarball itself
    shutil.copytree(PROJECT_ROOT / "conf", source / "conf", ignore=ignore)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    kedro = str(Path(sys.executable).with_name("kedro"))
    built = subprocess.run(
        [kedro, "package"], cwd=source, env=env, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (source / "dist").glob("*.whl")
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel],
        check=True,
    )
    return site, source / "dist" / "conf-attn_pipeline.tar.gz"


def _packaged_run(
    site: Path, folder: Path, args: list[str], hooks: Path
) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK", "MLFLOW_TRACKING_URI", "CI")
    }
    env |= {"PYTHONPATH": f"{hooks}{os.pathsep}{site}", "REQUESTS_LOG": str(hooks / "log")}
    return subprocess.run(
        [sys.executable, "-m", "attn_pipeline", "--conf-source=conf-attn_pipeline.tar.gz", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_packaged_project_runs_from_its_conf_tarball_with_the_shipped_extractor(
    installed_wheel: tuple[Path, Path], tmp_path: Path
) -> None:
    site, conf = installed_wheel
    folder = tmp_path / "run"  # the conf tarball and the raw data, nothing of the checkout
    folder.mkdir()
    shutil.copy(conf, folder)
    write_raw_dataset(folder / "data" / "01_raw" / "mnist")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(RECORD_REQUESTS)
    tiny = {**TINY_RUN, "feature_extractor": {}}  # the extractor: the package's reference
    out = _packaged_run(site, folder, ["--params", as_cli_params(tiny)], hooks)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "attn_pipeline" in {p.name for p in site.iterdir()}
    # the run imported the installed wheel, not the checkout
    assert str(PROJECT_ROOT / "src") not in out.stdout + out.stderr
    extractor = json.loads((folder / "data/06_models/feature_extractor/mnist.json").read_text())
    assert extractor["hash"] == REFERENCE_MNIST_HASH
    assert (folder / "data/08_reporting/mnist/spatial_gate/test_metrics.json").is_file()
    assert (folder / "mlruns" / "mlflow.db").is_file()
    # no usage data left: kedro-telemetry asked nothing of the network ...
    assert not (hooks / "log").exists(), (hooks / "log").read_text()
    # ... and it would have, with consent: the detector works
    (folder / ".telemetry").write_text("consent: true\n")
    prep = ["--params", as_cli_params({"data_prep": TINY_RUN["data_prep"]})]
    consented = _packaged_run(site, folder, ["--pipelines", "data_prep", *prep], hooks)
    assert consented.returncode == 0, consented.stderr[-3000:]
    assert (hooks / "log").exists() and "heapanalytics" in (hooks / "log").read_text()
