"""Typed configuration: bad values fail with messages that say what is allowed."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from attn_pipeline.pipeline_registry import pipeline_plan
from attn_pipeline.spec.config import (
    TYPED_BLOCKS,
    ConfigError,
    ModelConfig,
    RegistryConfig,
    StudyConfig,
    TrainConfig,
    check_values,
)
from attn_pipeline.spec.parameters import load_parameters
from tests.conftest import PROJECT_ROOT


def test_unknown_variant_lists_the_allowed_ones() -> None:
    with pytest.raises(ValidationError) as info:
        ModelConfig(variant="transformer")
    message = str(info.value)
    assert "variant" in message and "'none'" in message and "'latent'" in message


@pytest.mark.parametrize("field", ["latent_dim", "hidden_dim"])
def test_non_positive_sizes(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ModelConfig(**{field: 0})


@pytest.mark.parametrize("epochs", [0, -3])
def test_non_positive_epochs(epochs: int) -> None:
    with pytest.raises(ValidationError, match="epochs"):
        TrainConfig(epochs=epochs)


def test_misspelt_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match="epoch"):
        TrainConfig.model_validate({"epoch": 5})


def test_batch_larger_than_the_data_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="batch_size is 256 .* only 100 images"):
        TrainConfig(batch_size=256).check_fits(100)
    TrainConfig(batch_size=100).check_fits(100)


def test_unknown_champion_metric_lists_the_known_ones() -> None:
    with pytest.raises(
        ValidationError, match=r"'nll' is not a test metric; choose one of .*'nll_iw'"
    ):
        RegistryConfig(champion_metric="nll")


#: The typed blocks with defaults in code (study: none at all, see
#: test_the_study_lists_live_in_the_parameters_file_only).
BLOCKS = {name: config for name, config in TYPED_BLOCKS.items() if name != "study"}


ENVIRONMENTS = sorted(p.name for p in (PROJECT_ROOT / "conf").iterdir() if p.is_dir())


def _restated_defaults(values: dict, config: type, where: str) -> list[str]:
    defaults = config().model_dump(mode="json")
    typed = config.model_validate(values).model_dump(mode="json")
    # a block's variant names what it is, whatever ModelConfig's default
    return [f"{where}.{k}" for k in values if typed[k] == defaults[k] and k != "variant"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_no_parameters_file_restates_a_default(env: str) -> None:
    """One source per value: a default lives in spec/config.py beside its description, and
    a parameters file (base, or an environment over base) states only what differs."""
    folder = PROJECT_ROOT / "conf" / env
    raw = {}
    for path in [*folder.glob("parameters*.yml"), *folder.glob("environment.yml")]:
        raw |= yaml.safe_load(path.read_text()) or {}
    restated = []
    for name, values in raw.items():
        if name in BLOCKS:
            restated += _restated_defaults(values, BLOCKS[name], f"{env}: {name}")
        elif isinstance(values, dict) and "model" in values:
            restated += _restated_defaults(values["model"], ModelConfig, f"{env}: {name}.model")
    assert not restated, f"these restate the code's default: {restated}"


def test_every_typed_block_is_in_base_so_nodes_can_read_it() -> None:
    base = load_parameters(PROJECT_ROOT / "conf", env="base")
    assert set(TYPED_BLOCKS) <= set(base)


def test_an_old_parameter_name_is_refused_naming_the_new_one() -> None:
    from attn_pipeline.pipeline_registry import pipeline_plan  # noqa: PLC0415

    params = load_parameters(PROJECT_ROOT / "conf")
    with pytest.raises(ConfigError, match="'variants' is called 'entries'"):
        pipeline_plan({**params, "variants": ["none"]})
    old_study = {"variants": ["none"], "seeds": [0], "baselines": ["none"]}
    with pytest.raises(ConfigError, match="'study.variants' is called 'study.entries'"):
        pipeline_plan({**params, "study": old_study})
    with pytest.raises(ValidationError, match="'study.variants' is called 'study.entries'"):
        StudyConfig.model_validate(old_study)


def test_the_study_lists_live_in_the_parameters_file_only() -> None:
    with pytest.raises(ValidationError, match="entries"):
        StudyConfig()
    study = StudyConfig.model_validate(load_parameters(PROJECT_ROOT / "conf")["study"])
    assert study.baselines[0] in study.entries and len(study.seeds) > 1


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_non_finite_value_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=value)


def test_entries_that_are_not_a_list_are_refused() -> None:
    with pytest.raises(ValueError, match="'entries' must be a list of names, got 'none'"):
        pipeline_plan({**load_parameters(), "entries": "none"})


def test_a_bad_value_is_one_paragraph_and_the_docs_quote_it() -> None:
    """`kedro run --params latent.model.variant=bogus` prints this (click's ``Error: ``),
    before any node and without a traceback; getting-started.md quotes it word for word."""
    with pytest.raises(ConfigError) as error:
        check_values({**load_parameters(), "latent": {"model": {"variant": "bogus"}}})
    printed = f"Error: {error.value.message}"
    doc = (PROJECT_ROOT / "docs" / "getting-started.md").read_text()
    marker = "<!-- error-text: --params latent.model.variant=bogus"
    quoted = doc.split(marker, 1)[1].split("```\n", 2)[1].strip()
    assert quoted == printed
