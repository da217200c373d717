"""An environment is one file, conf/<name>/environment.yml: the data set's names and the
parameters it changes. A translated environment of another data set is written here as
docs/extending.md shows it, and the data preparation runs through it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from attn_pipeline.models import build_vae, count_parameters
from attn_pipeline.pipelines.study.statistics import EQUAL_SIZE_TOLERANCE, comparison_kind
from attn_pipeline.spec.config import ModelConfig
from attn_pipeline.spec.parameters import load_parameters
from tests.conftest import PROJECT_ROOT, TINY_RUN, project_copy

EXTENDING = PROJECT_ROOT / "docs" / "extending.md"


def _documented_environment() -> str:
    """The translated environment docs/extending.md shows, as written there."""
    text = EXTENDING.read_text()
    match = re.search(r"```yaml\n(dataset: translated_fashion_mnist\n.*?)```", text, re.S)
    assert match, "docs/extending.md shows no translated environment"
    return match.group(1)


def test_the_documented_environment_is_the_projects_file() -> None:
    shipped = PROJECT_ROOT / "conf" / "translated_fashion_mnist" / "environment.yml"
    documented = yaml.safe_load(_documented_environment())
    assert documented == yaml.safe_load(shipped.read_text())


@pytest.mark.parametrize(
    "env", ["fashion_mnist", "translated_mnist", "translated_fashion_mnist", "multi_mnist"]
)
def test_each_environment_is_one_file(env: str) -> None:
    assert sorted(p.name for p in (PROJECT_ROOT / "conf" / env).iterdir()) == ["environment.yml"]
    params = load_parameters(PROJECT_ROOT / "conf", env)
    assert params["dataset"] == env  # the globals' name reaches the parameters too
    # base's blocks are kept; the scenes' environment states its own budget
    assert params["train"] == ({"epochs": 12} if env == "multi_mnist" else {})
    assert "none" in params


def test_the_scenes_size_baseline_has_the_objects_variants_parameters() -> None:
    """On multi-MNIST's 64x64 scenes ``none_wide`` is within 2% of ``objects``'s parameter
    count, as the study's tables call it "equal size"."""
    params = load_parameters(PROJECT_ROOT / "conf", "multi_mnist")
    shape = (1, params["data_prep"]["canvas_size"], params["data_prep"]["canvas_size"])
    sizes = {
        name: count_parameters(build_vae(ModelConfig.model_validate(params[name]["model"]), shape))
        for name in params["study"]["entries"]
    }
    assert abs(sizes["none_wide"] / sizes["objects"] - 1) <= EQUAL_SIZE_TOLERANCE
    assert comparison_kind(sizes["objects"], sizes["none_wide"]) == "equal budget and size"


@pytest.mark.pipeline
def test_a_translated_environment_of_another_data_set_runs_from_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented file, renamed for a new data set made from MNIST's raw files: the
    data preparation writes 40x40 canvases under the new name, and base's other values
    stay (the study's workers, the entries' model blocks)."""
    project = project_copy(tmp_path / "project")
    text = _documented_environment().replace("translated_fashion_mnist", "shifted_digits")
    text = text.replace("raw_data: fashion_mnist", "raw_data: mnist")
    (project / "conf" / "shifted_digits").mkdir()
    (project / "conf" / "shifted_digits" / "environment.yml").write_text(text)
    params = load_parameters(project / "conf", "shifted_digits")
    assert params["dataset"] == "shifted_digits" and params["entries"] == ["none", "where"]
    assert params["where"]["model"]["variant"] == "where"

    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    bootstrap_project(project)
    runtime = {"data_prep": {**TINY_RUN["data_prep"], "canvas_size": 40}}
    with KedroSession.create(
        project_path=project, env="shifted_digits", runtime_params=runtime
    ) as session:
        session.run(pipeline_names=["data_prep"])
    train = torch.load(project / "data" / "05_model_input" / "shifted_digits_train.pt")
    assert tuple(train["images"].shape[1:]) == (1, 40, 40)
    assert not (project / "data" / "05_model_input" / "mnist_train.pt").exists()
