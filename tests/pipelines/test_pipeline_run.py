"""A real `kedro run` through a KedroSession on tiny data, into a temporary MLflow store."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from attn_pipeline.data.fingerprints import tensor_fingerprint
from attn_pipeline.hooks import MissingInputError
from attn_pipeline.models.checkpoint import check_trained_on
from attn_pipeline.spec.config import ConfigError
from attn_pipeline.tracking.model_registry import REGISTERED_TAG
from attn_pipeline.tracking.runs import parent_run_name, runner_name
from tests.conftest import (
    TINY_RUN,
    as_cli_params,
    chromium,
    free_port,
    project_copy,
    wait_until_answering,
    write_idx,
    write_raw_dataset,
)

#: one worker runs this file: its tests share a module fixture (make test: --dist loadgroup)
pytestmark = [pytest.mark.pipeline, pytest.mark.xdist_group("pipeline_run")]

GENERATION_METRICS = {
    "test/nll_iw",
    "test/fid_proxy",
    "test/fid_proxy_recon",
    "test/kid_proxy",
    "test/kid_proxy_std",
    "test/precision",
    "test/recall",
    "test/sample_confidence",
    "test/class_coverage",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project's configuration with tiny raw data, run from its own folder."""
    # a small study: two variants (one steerable), two seeds
    study = {"entries": ["none", "spatial_gate"], "seeds": [0, 1], "baselines": ["none"]}
    return project_copy(tmp_path_factory.mktemp("project"), {"study": study}, 240, 60)


@pytest.fixture(scope="module")
def tracking_uri(project: Path) -> str:
    return f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"


def _run(
    project: Path,
    tracking_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    runtime_params: dict,
    pipeline: str | None = None,
    env: str | None = None,
) -> dict:
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    (project / "mlruns").mkdir(exist_ok=True)
    bootstrap_project(project)
    with KedroSession.create(
        project_path=project, runtime_params=runtime_params, env=env
    ) as session:
        kwargs = {"pipeline_names": [pipeline]} if pipeline else {}
        return session.run(**kwargs)


@pytest.fixture(scope="module")
def default_run(project: Path, tracking_uri: str) -> Path:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _run(project, tracking_uri, monkeypatch, TINY_RUN)
    return project


def _variant_runs(tracking_uri: str) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return {run.info.run_name: run for run in runs if "mlflow.parentRunId" in run.data.tags}


def test_each_variant_is_a_child_run_with_the_same_metric_names(
    default_run: Path, tracking_uri: str
) -> None:
    extractor = json.loads(
        (default_run / "data/06_models/feature_extractor/mnist.json").read_text()
    )
    assert 0.5 <= extractor["test_accuracy"] <= 1 and len(extractor["hash"]) == 16
    runs = _variant_runs(tracking_uri)
    assert set(runs) == {"none", "spatial_gate"}
    parents = {run.data.tags["mlflow.parentRunId"] for run in runs.values()}
    assert len(parents) == 1
    client = mlflow.MlflowClient(tracking_uri)
    parent = client.get_run(parents.pop())
    assert parent.info.run_name == "default"  # not "__default__"
    assert parent.data.tags["runner"] == "SequentialRunner"  # not an object's repr
    # the typed parameters flattened to their values, as the children's are
    assert parent.data.params["train.epochs"] == "2"
    assert parent.data.params["none.model.latent_dim"] == "20"
    assert not [k for k, v in parent.data.params.items() if "=" in v or "Config(" in v]
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # the same names, but for what only a variant with a spatial map has
    only_steerable = {"train/attention_loss"} | {
        name
        for name in runs["spatial_gate"].data.metrics
        if name.startswith(("test/steer_", "test/move_"))
    }
    assert set(runs["none"].data.metrics) == set(runs["spatial_gate"].data.metrics) - (
        only_steerable
    )
    assert {"test/steer_suppression_ink_share", "test/move_in_box"} <= only_steerable
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert {"test/neg_elbo", "test/recon_bce", "test/mse", "test/kl"} <= set(run.data.metrics)
        assert GENERATION_METRICS <= set(run.data.metrics)
        assert run.data.metrics["test/nll_iw"] <= run.data.metrics["test/neg_elbo"] + 1.0
        # every FID-proxy figure says which extractor and how many samples made it
        assert run.data.tags["fid_n_samples"] == "40" and run.data.tags["nll_iw_k"] == "5"
        assert run.data.tags["nll_iw_n_images"] == "30"
        assert run.data.tags["feature_extractor_hash"] == extractor["hash"]
        assert "grey levels" in run.data.tags["nll_iw_likelihood"]
        assert {"train/loss", "val/loss", "val/recon", "val/kl"} <= set(run.data.metrics)
        assert run.data.tags["variant"] == run.info.run_name
        assert run.data.tags["dataset"] == "mnist"
        assert run.data.params["model.variant"] == run.info.run_name
        assert run.data.params["train.epochs"] == "2"
        # the per-epoch curve has one point per epoch
        history = mlflow.MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "val/loss")
        assert [m.step for m in history] == [1, 2]
        # the images it was trained, validated and tested on, as MLflow dataset inputs
        inputs = {
            tag.value: d.dataset
            for d in run.inputs.dataset_inputs
            for tag in d.tags
            if tag.key == "mlflow.data.context"
        }
        assert {c: d.name for c, d in inputs.items()} == {
            "training": "mnist_train",
            "validation": "mnist_val",
            "test": "mnist_test",
        }
        test_set = torch.load(default_run / "data/05_model_input/mnist_test.pt")
        assert inputs["test"].digest == tensor_fingerprint(test_set["images"])


def test_variant_runs_hold_their_images_and_tables(default_run: Path, tracking_uri: str) -> None:
    client = mlflow.MlflowClient(tracking_uri)
    for name, run in _variant_runs(tracking_uri).items():
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {
            "samples.png",
            "reconstructions.png",
            "interpolations.png",
            "training_history.csv",
        } <= artifacts
        for image in ("samples", "reconstructions", "interpolations"):
            assert (
                default_run / "data" / "08_reporting" / "mnist" / name / f"{image}.png"
            ).is_file()
        reports = default_run / "data" / "08_reporting" / "mnist" / name
        metrics = json.loads((reports / "test_metrics.json").read_text())
        assert metrics["test/neg_elbo"] == pytest.approx(run.data.metrics["test/neg_elbo"])
        training = default_run / "data/06_models/mnist" / name / "training"
        assert len(list(training.glob("*/epoch_*.pt"))) == 2  # one configuration, 2 epochs
        assert ("steering.png" in artifacts) == (name == "spatial_gate")
    table = (default_run / "data" / "08_reporting" / "mnist" / "test_metrics.csv").read_text()
    assert table.splitlines()[0].startswith("variant,neg_elbo")


@pytest.mark.process  # `mlflow ui` and a browser
def test_the_mlflow_ui_names_each_runs_data_and_filters_by_it(
    default_run: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """The runs table of `mlflow ui` (as `make mlflow-ui` starts it) shows the data sets a
    run trained, validated and was tested on in its Dataset column, and its Datasets filter
    lists them and keeps the runs that used the one picked (headless Chromium)."""
    from playwright.sync_api import Error as PlaywrightError  # noqa: PLC0415 (the browser tests')
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist").experiment_id
    # a run that used no data, which the filter must leave out
    no_data = client.create_run(experiment, run_name="no_data").info.run_id
    client.set_terminated(no_data)
    runs = client.search_runs([experiment])
    named = {
        f"{i.dataset.name} ({i.dataset.digest})": i.dataset.name
        for run in runs
        for i in run.inputs.dataset_inputs
    }
    train = next(label for label, name in named.items() if name == "mnist_train")
    with_train = [
        r for r in runs if any(i.dataset.name == "mnist_train" for i in r.inputs.dataset_inputs)
    ]
    assert {"mnist_train", "mnist_val", "mnist_test"} <= set(named.values())
    assert 0 < len(with_train) < len(runs)

    port, log = free_port(), tmp_path / "mlflow_ui.log"
    ui = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--port", str(port)]
        + ["--backend-store-uri", tracking_uri],
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{base}/health", ui, log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning")
            try:
                # the Dataset column of the run that used it (the grid draws after its footer)
                page.get_by_text(train).first.wait_for(timeout=120_000)
                page.get_by_test_id("datasets-select-dropdown").click()
                options = page.get_by_role("option")
                options.first.wait_for(timeout=30_000)
                listed = " ".join(options.all_inner_texts())
                assert all(label in listed for label in named), listed
                options.filter(has_text=train).click()
                page.keyboard.press("Escape")
                footer = page.get_by_text(f"{len(with_train)} matching runs")
                footer.wait_for(timeout=60_000)
            except (AssertionError, PlaywrightError):  # what the page showed, kept
                page.screenshot(path=str(tmp_path / "mlflow_ui.png"))
                raise
            browser.close()
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=60)
        client.delete_run(no_data)  # the module's other tests count the parent runs


@pytest.mark.process
def test_registered_champion_loads_in_a_fresh_process_without_project_code(
    default_run: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """Every trained generator is a registered version, tagged with its test figures; the
    champion loads by name in a process that imports nothing of this project."""
    client = mlflow.MlflowClient(tracking_uri)
    run = _variant_runs(tracking_uri)["spatial_gate"]
    (version,) = client.search_model_versions("name = 'attn_pipeline.mnist.spatial_gate'")
    assert version.run_id == run.info.run_id
    assert version.tags["entry"] == "spatial_gate" and version.tags["seed"] == "0"
    assert float(version.tags["test/nll_iw"]) == pytest.approx(run.data.metrics["test/nll_iw"])
    assert version.tags["feature_extractor_hash"] == run.data.tags["feature_extractor_hash"]
    champion = client.get_model_version_by_alias("attn_pipeline.mnist.spatial_gate", "champion")
    assert champion.version == version.version
    described = client.get_registered_model("attn_pipeline.mnist.spatial_gate").description
    assert "`spatial_gate`" in described and "mnist" in described and "champion" in described
    script = (
        "import mlflow, torch, sys\n"
        f"mlflow.set_tracking_uri({tracking_uri!r})\n"
        "model = mlflow.pytorch.load_model('models:/attn_pipeline.mnist.spatial_gate@champion')\n"
        "images = model(torch.randn(5, 20))\n"
        "assert images.shape == (5, 1, 28, 28), images.shape\n"
        "assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0\n"
        "assert not [m for m in sys.modules if m.startswith('attn_pipeline')]\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_train_pipeline_runs_on_its_own(
    default_run: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = default_run / "data" / "06_models" / "mnist" / "none" / "model.pt"
    before = checkpoint.stat().st_mtime_ns
    _run(
        default_run,
        tracking_uri,
        monkeypatch,
        {**TINY_RUN, "train": {"epochs": 1, "batch_size": 50}},
        pipeline="train",
    )
    assert checkpoint.stat().st_mtime_ns > before


@pytest.mark.process
def test_each_pipeline_works_from_raw_data_or_names_the_command_to_run_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a fresh folder holding only the raw files, `--pipelines train` prepares the data
    and trains; `evaluate` without a trained model stops before any node with one line that
    names `kedro run --pipelines train`, no traceback; `evaluate` after `train` works."""
    project = _fresh_project(tmp_path)
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    kedro = str(Path(sys.executable).with_name("kedro"))
    out = subprocess.run(
        [kedro, "run", "--pipelines", "evaluate", "--params", as_cli_params(TINY_RUN)],
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    models = project / "data/06_models/mnist"
    assert out.stderr.strip().splitlines()[-1] == (
        f"Error: none.checkpoint ({models / 'none/model.pt'}) does not exist: run `kedro run "
        "--pipelines train` first; spatial_gate.checkpoint "
        f"({models / 'spatial_gate/model.pt'}) does not exist: run "
        "`kedro run --pipelines train` first"
    )
    assert not (project / "data/05_model_input").exists() or not list(
        (project / "data/05_model_input").iterdir()
    )  # stopped before any node
    _run(project, uri, monkeypatch, TINY_RUN, pipeline="train")
    assert (project / "data/05_model_input/mnist_train.pt").is_file()
    assert (project / "data/06_models/mnist/none/model.pt").is_file()
    _run(project, uri, monkeypatch, TINY_RUN, pipeline="evaluate")
    assert (project / "data/08_reporting/mnist/none/test_metrics.json").is_file()


def test_two_data_sets_in_one_folder_keep_their_models_and_figures_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MNIST, then Fashion-MNIST, then MNIST's evaluation again, in one project folder: each
    data set's models, reports and MLflow figures are those of a run of it alone."""
    one_variant = {**TINY_RUN, "entries": ["none"]}
    shared = _fresh_project(tmp_path / "shared")
    write_raw_dataset(shared / "data/01_raw/fashion_mnist", n_train=200, n_test=50)
    alone = _fresh_project(tmp_path / "alone")
    shutil.rmtree(alone / "data/01_raw/mnist")
    write_raw_dataset(alone / "data/01_raw/fashion_mnist", n_train=200, n_test=50)
    uri = f"sqlite:///{shared / 'mlruns' / 'mlflow.db'}"
    _run(shared, uri, monkeypatch, one_variant)
    _run(shared, uri, monkeypatch, one_variant, env="fashion_mnist")
    _run(shared, uri, monkeypatch, one_variant, pipeline="evaluate")
    _run(
        alone,
        f"sqlite:///{alone / 'mlruns' / 'mlflow.db'}",
        monkeypatch,
        one_variant,
        env="fashion_mnist",
    )

    def figures(root: Path, dataset: str) -> dict:
        return json.loads(
            (root / f"data/08_reporting/{dataset}/none/test_metrics.json").read_text()
        )

    mnist = figures(shared, "mnist")
    assert figures(shared, "fashion_mnist") == figures(alone, "fashion_mnist") != mnist
    client = mlflow.MlflowClient(uri)
    for dataset in ("mnist", "fashion_mnist"):
        experiment = client.get_experiment_by_name(f"attn_pipeline_{dataset}")
        runs = client.search_runs([experiment.experiment_id], "tags.entry = 'none'")
        logged = {
            r.data.metrics["test/neg_elbo"] for r in runs if "test/neg_elbo" in r.data.metrics
        }
        assert logged == {figures(shared, dataset)["test/neg_elbo"]}, dataset
    # the MNIST evaluation after the Fashion run scored MNIST's own model
    mnist_runs = client.search_runs(
        [client.get_experiment_by_name("attn_pipeline_mnist").experiment_id],
        "attributes.run_name = 'evaluate'",
    )
    assert len(mnist_runs) == 1
    # a model copied in from the other data set's folder is refused before any node
    models = shared / "data/06_models"
    shutil.copy(models / "fashion_mnist/none/model.pt", models / "mnist/none/model.pt")
    with pytest.raises(ConfigError, match="none.checkpoint: this model was trained on fashion"):
        _run(shared, uri, monkeypatch, one_variant, pipeline="evaluate")


def test_a_bf16_run_says_which_precision_it_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train.precision: bf16`, a tiny run end to end: the variant's run carries the
    precision it trained in (tag and params) and the reason, and its test figures."""
    project = _fresh_project(tmp_path)
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    bf16 = {**TINY_RUN, "entries": ["none"], "train": {**TINY_RUN["train"], "precision": "bf16"}}
    _run(project, uri, monkeypatch, bf16)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    (run,) = client.search_runs([experiment.experiment_id], "tags.entry = 'none'")
    assert run.data.tags["precision"] == "bf16"
    assert run.data.params["precision_used"] == "bf16" and run.data.params["precision_reason"]
    assert run.data.params["train.precision"] == "bf16"
    assert math.isfinite(run.data.metrics["test/nll_iw"])


def test_a_model_is_never_read_as_another_data_sets() -> None:
    checkpoint = {"data": {"dataset": "fashion_mnist", "train_images": "abc123"}}
    with pytest.raises(
        ValueError, match=r"trained on fashion_mnist \(training images abc123\).*data set is mnist"
    ):
        check_trained_on(checkpoint, {"dataset": "mnist"})
    check_trained_on(checkpoint, {"dataset": "fashion_mnist"})


def test_a_missing_raw_file_names_the_fetch_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _fresh_project(tmp_path)
    (project / "data/01_raw/mnist/train-labels-idx1-ubyte.gz").unlink()
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    with pytest.raises(MissingInputError, match=r"raw_train_labels .* run `attn-fetch-data mnist`"):
        _run(project, uri, monkeypatch, TINY_RUN, pipeline="train")
    assert mlflow.active_run() is None
    # labels of another length (another release): both files named, and the fix
    labels = project / "data/01_raw/mnist/train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(7, dtype=np.uint8))
    with pytest.raises(
        ConfigError,
        match=r"train-images.* has 240 images but .*train-labels.* has 7"
        r" labels.*`attn-fetch-data mnist --force`",
    ):
        _run(project, uri, monkeypatch, TINY_RUN, pipeline="train")


def _fresh_project(root: Path) -> Path:
    """A project folder as a fresh clone has it after the fetch."""
    return project_copy(root, n_train=240, n_test=60)


def test_bad_config_stops_the_run_before_any_node(
    default_run: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = default_run / "data" / "06_models" / "mnist" / "spatial_gate" / "model.pt"
    before = checkpoint.read_bytes()
    with pytest.raises(Exception, match="(?s)spatial_gate.model.*Input should be 'none', 'latent'"):
        _run(
            default_run,
            tracking_uri,
            monkeypatch,
            {**TINY_RUN, "spatial_gate": {"model": {"variant": "bogus"}}},
        )
    with pytest.raises(Exception, match="batch_size is 5000"):
        _run(default_run, tracking_uri, monkeypatch, {**TINY_RUN, "train": {"batch_size": 5000}})
    outside = {**TINY_RUN["generate"], "steering": {"bottom": 200}}  # read before training
    with pytest.raises(Exception, match="reaches outside the 28x28 images"):
        _run(default_run, tracking_uri, monkeypatch, {**TINY_RUN, "generate": outside})
    assert checkpoint.read_bytes() == before  # nothing already saved is lost
    assert mlflow.active_run() is None  # no MLflow run is left open by a refused run


def test_a_study_cell_outside_attn_study_and_a_missing_gpu_are_refused_before_any_node(
    project: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="the study's cells run through `attn-study`"):
        _run(project, tracking_uri, monkeypatch, TINY_RUN, pipeline="study")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device is 'cuda' but torch sees no CUDA"):
            _run(project, tracking_uri, monkeypatch, {**TINY_RUN, "train": {"device": "cuda"}})
    assert mlflow.active_run() is None


def test_an_environment_switches_the_data_set(
    default_run: Path,
    tracking_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`kedro run --env fashion_mnist` reads and writes Fashion-MNIST's files, not MNIST's
    (building the pipelines must not reset the catalog's ${globals:...} to base), and says
    that conf/local, which Kedro does not read under --env, leaves its keys unapplied."""
    write_raw_dataset(default_run / "data" / "01_raw" / "fashion_mnist")
    mnist_train = default_run / "data" / "05_model_input" / "mnist_train.pt"
    before = mnist_train.read_bytes()
    with caplog.at_level(logging.WARNING, logger="attn_pipeline.hooks"):
        _run(default_run, tracking_uri, monkeypatch, TINY_RUN, "data_prep", env="fashion_mnist")
    assert "conf/local is not read" in caplog.text and "its keys study do not apply" in caplog.text
    assert (default_run / "data" / "05_model_input" / "fashion_mnist_train.pt").is_file()
    assert mnist_train.read_bytes() == before


def test_an_environment_that_reshapes_the_pipelines_is_honoured(
    default_run: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kedro run --env X` where X changes the variant list: the pipelines are built from
    the run's own parameters (Kedro's loading of base, X and --params), not from base."""
    env = default_run / "conf" / "one_variant"
    env.mkdir()
    (env / "parameters.yml").write_text("entries: [none]\n")
    untouched = default_run / "data" / "06_models" / "mnist" / "spatial_gate" / "model.pt"
    before = untouched.read_bytes()
    _run(default_run, tracking_uri, monkeypatch, TINY_RUN, "train", env="one_variant")
    assert untouched.read_bytes() == before  # spatial_gate is not in this run
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    (parent,) = client.search_runs(
        [experiment.experiment_id],
        "attributes.run_name = 'train'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert [r.info.run_name for r in children] == ["none"]
    assert mlflow.active_run() is None


def test_a_diverging_run_fails_with_a_clear_error_and_logs_no_nan(
    default_run: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = [
        default_run / "data" / folder / "mnist" / variant / name
        for variant in ("none", "spatial_gate")
        for folder, name in (("08_reporting", "test_metrics.json"), ("06_models", "model.pt"))
    ]
    before = [path.read_bytes() for path in saved]
    diverging = {**TINY_RUN, "train": {"epochs": 2, "batch_size": 50, "learning_rate": 1e6}}
    with pytest.raises(Exception, match=r"diverged.*learning_rate = 1000000.0 is too high"):
        _run(default_run, tracking_uri, monkeypatch, diverging)
    assert [path.read_bytes() for path in saved] == before  # nothing overwritten
    assert mlflow.active_run() is None
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("attn_pipeline_mnist")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FAILED"
    # the first variant trained stops the run: its child run failed, no other was opened
    assert [r.info.status for r in children] == ["FAILED"]
    for run in [parent, *children]:
        assert all(math.isfinite(v) for v in run.data.metrics.values())


def test_a_partial_block_in_an_environment_merges_into_base(project: Path) -> None:
    """`train: {batch_size: 64}` in an environment changes that key only: epochs stays
    base's 8, not the code's default nor nothing."""
    env = project / "conf" / "partial"
    env.mkdir(exist_ok=True)
    (env / "parameters.yml").write_text("train:\n  batch_size: 64\n")
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="partial") as session:
        train = session.load_context().params["train"]  # Kedro gives the typed config
    assert (train.batch_size, train.epochs, train.learning_rate) == (64, 8, 1e-3)


def test_a_misspelt_top_level_param_is_refused_with_the_nearest_name(
    project: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"'trian' \(did you mean 'train'\?\)"):
        _run(project, tracking_uri, monkeypatch, {"trian": {"epochs": 1}})
    assert mlflow.active_run() is None


def test_a_misspelt_top_level_key_in_an_environment_file_is_refused_naming_the_file(
    project: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trian: {epochs: 3}` in conf/local or an environment would otherwise train the default
    budget in silence; an entry the environment defines and lists is allowed."""
    env = project / "conf" / "typo"
    env.mkdir()
    (env / "parameters.yml").write_text("trian:\n  epochs: 3\n")
    with pytest.raises(
        ConfigError, match=r"conf/typo/parameters.yml names 'trian' \(did you mean 'train'\?\)"
    ):
        _run(project, tracking_uri, monkeypatch, TINY_RUN, env="typo")
    assert mlflow.active_run() is None
    own = project / "conf" / "own_entry"
    own.mkdir()
    (own / "parameters.yml").write_text(
        "entries: [mine]\nmine:\n  model: {variant: none, latent_dim: 4}\n"
    )
    _run(project, tracking_uri, monkeypatch, TINY_RUN, "train", env="own_entry")
    assert (project / "data/06_models/mnist/mine/model.pt").is_file()


@pytest.mark.parametrize(
    ("recorded", "tag"),
    [
        (
            "<kedro.runner.sequential_runner.SequentialRunner object at 0x7f70fbbce610>",
            "SequentialRunner",
        ),
        (
            "<kedro.runner.parallel_runner.ParallelRunner object at 0x7f70fbbce610>",
            "ParallelRunner",
        ),
        ("None", "SequentialRunner"),  # `kedro run` without --runner
    ],
)
def test_the_runner_tag_is_a_class_name(recorded: str, tag: str) -> None:
    assert runner_name(recorded) == tag


@pytest.mark.parametrize(
    ("run_params", "name"),
    [
        ({"pipeline_names": None, "tags": ()}, "default"),  # `kedro run`
        ({"pipeline_names": ["__default__"], "tags": ()}, "default"),
        ({"pipeline_names": ["train"], "tags": ()}, "train"),
        ({"pipeline_names": ["data_prep", "train"], "tags": ()}, "data_prep+train"),
        ({"pipeline_names": None, "tags": ("evaluate",)}, "evaluate"),  # `--tags evaluate`
    ],
)
def test_the_parent_run_is_named_after_what_ran(run_params: dict, name: str) -> None:
    assert parent_run_name(run_params) == name


def test_a_run_started_again_keeps_its_registered_versions(
    default_run: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run again trains nothing (its epochs are saved): its generators are the
    versions already registered, named on the new runs, neither logged nor registered twice."""
    client = mlflow.MlflowClient(tracking_uri)
    name = "attn_pipeline.mnist.spatial_gate"
    before = {v.version for v in client.search_model_versions(f"name = '{name}'")}
    extractor = default_run / "data/06_models/feature_extractor/mnist.pt"
    extractor.chmod(0o444)  # a stored extractor is read, never written again unchanged
    stamp = extractor.stat().st_mtime_ns
    _run(default_run, tracking_uri, monkeypatch, TINY_RUN)
    assert extractor.stat().st_mtime_ns == stamp
    extractor.chmod(0o644)
    after = client.search_model_versions(f"name = '{name}'")
    assert {v.version for v in after} == before
    rerun = _variant_runs(tracking_uri)["spatial_gate"]  # the newest run of that name
    (version,) = [v for v in after if f"{name}/{v.version}" == rerun.data.tags[REGISTERED_TAG]]
    assert version.run_id != rerun.info.run_id  # registered by the first run
    assert "test/nll_iw" in version.tags
    logged = mlflow.search_logged_models(
        experiment_ids=[rerun.info.experiment_id],
        filter_string=f"source_run_id = '{rerun.info.run_id}'",
        output_format="list",
    )
    assert logged == []
