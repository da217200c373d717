"""Project pipelines.

Each variant named in the ``variants`` parameter gets a namespaced copy of the train,
evaluate and generate pipelines (``none.train_none``, ``latent.train_latent``, ...), and the
``compare`` study one copy per variant and seed in ``study`` (the pattern of Kedro's
"dynamic pipelines" documentation). The lists are the run's own parameters, as Kedro
loaded them (base, the run's ``--env``, conf/local and ``--params``): once a session's
context exists, :class:`attn_pipeline.hooks.RunPlanCheckHook` hands them over with
:func:`use_run_parameters` and the pipelines are built again from them. Only where no
session is made (``kedro registry list``) are the files read here, base and ``KEDRO_ENV``
(else local).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from kedro.framework.project import pipelines, settings
from kedro.pipeline import Pipeline
from pydantic import ValidationError

from attn_pipeline.config import SPATIAL_MAP_VARIANTS, ModelConfig, StudyConfig
from attn_pipeline.pipelines import (
    compare,
    data_prep,
    evaluate,
    feature_extractor,
    generate,
    train,
)


def load_parameters(conf_source: Path | None = None, env: str | None = None) -> dict[str, Any]:
    """The project's parameters files, base overlaid by ``env`` (``KEDRO_ENV``, else local).

    Read as plain YAML, the environment's blocks merged into base's key by key, as Kedro
    merges them (``merge_strategy: soft`` in settings.py). Not through a second
    ``OmegaConfigLoader``: creating one re-registers the ``globals`` resolver for every
    loader, so the session's catalog would then resolve ``${globals:dataset}`` from base
    and ``--env fashion_mnist`` would read MNIST's files.
    Interpolations are left unresolved; the lists and model blocks read here have none.
    """
    conf_source = conf_source or Path.cwd() / settings.CONF_SOURCE
    if not conf_source.is_dir():
        raise FileNotFoundError(
            f"no configuration folder {conf_source}: run kedro from the project's root"
        )
    env = env or os.environ.get("KEDRO_ENV") or settings.CONFIG_LOADER_ARGS["default_run_env"]
    merged: dict[str, Any] = {}
    for folder in (settings.CONFIG_LOADER_ARGS["base_env"], env):
        for path in sorted((conf_source / folder).glob("**/parameters*.yml")):
            merged = deep_merge(merged, yaml.safe_load(path.read_text()) or {})
    return merged


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base``: nested dicts key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _checked_names(names: list[str], what: str, params: dict[str, Any]) -> tuple[str, ...]:
    if not names or len(set(names)) != len(names):
        raise ValueError(f"parameter '{what}' must list distinct names, got {names!r}")
    missing = [name for name in names if "model" not in params.get(name, {})]
    if missing:
        raise ValueError(
            f"parameter '{what}' names {missing}, which have no '<name>.model' block in "
            "conf/base/parameters_train.yml: add one or remove them from the list"
        )
    return tuple(names)


def steerable_variants(names: tuple[str, ...], params: dict[str, Any]) -> set[str]:
    """Names whose model has a spatial attention map that generation can edit."""
    steerable = set()
    for name in names:
        try:
            variant = ModelConfig.model_validate(params[name]["model"]).variant
        except ValidationError:
            continue  # the run stops at Kedro's check of typed parameters, which names the key
        if variant in SPATIAL_MAP_VARIANTS:
            steerable.add(name)
    return steerable


def pipeline_plan(params: dict[str, Any]) -> dict[str, Any]:
    """What the pipelines' shape is built from: the variant lists, the study's seeds and
    which variants get a steering node."""
    variants = _checked_names(list(params.get("variants", [])), "variants", params)
    study = StudyConfig.model_validate(params.get("study", {}))
    study_variants = _checked_names(list(study.variants), "study.variants", params)
    return {
        "variants": variants,
        "study.variants": study_variants,
        "study.seeds": tuple(study.seeds),
        "steerable": steerable_variants(tuple(set(variants) | set(study_variants)), params),
    }


#: The parameters of the run under way, once its context exists (see the module's docstring).
_run_parameters: dict[str, Any] | None = None


def use_run_parameters(params: dict[str, Any]) -> None:
    """Build the project's pipelines from ``params`` (a session's parameters, as Kedro's
    configuration loader read them), and drop any built before from other parameters."""
    global _run_parameters  # noqa: PLW0603 (one run's parameters per process at a time)
    _run_parameters = params
    pipelines.configure(__name__)  # this module: the pipelines are built again on next access


def register_pipelines() -> dict[str, Pipeline]:
    plan = pipeline_plan(_run_parameters if _run_parameters is not None else load_parameters())
    variants, study_variants = plan["variants"], plan["study.variants"]
    steerable = plan["steerable"]
    pipelines = {
        "data_prep": data_prep.create_pipeline(),
        "feature_extractor": feature_extractor.create_pipeline(),
        "train": train.create_pipeline(variants),
        "evaluate": evaluate.create_pipeline(variants),
        "generate": generate.create_pipeline(variants, steerable=steerable),
    }
    pipelines["__default__"] = sum(pipelines.values(), start=Pipeline([]))
    pipelines["compare"] = compare.create_pipeline(
        study_variants, plan["study.seeds"], steerable=steerable
    )
    return pipelines
