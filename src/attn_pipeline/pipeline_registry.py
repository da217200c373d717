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

from kedro.framework.project import pipelines, settings
from kedro.pipeline import Pipeline
from pydantic import ValidationError

from attn_pipeline.config import ModelConfig, StudyConfig
from attn_pipeline.pipelines import (
    compare,
    data_prep,
    evaluate,
    feature_extractor,
    generate,
    train,
)
from attn_pipeline.variants import variant_spec


def load_parameters(conf_source: Path | None = None, env: str | None = None) -> dict[str, Any]:
    """The project's parameters as Kedro reads them, for code that runs without a session
    (``kedro registry list``, benchmarks, tests): ``conf_source`` (default: ``conf/`` in the
    working directory), base overlaid by ``env`` (``KEDRO_ENV``, else local).

    Within a run, use the session's own loader (``context.config_loader["parameters"]``):
    a second ``OmegaConfigLoader`` re-registers the ``globals`` resolver for every loader,
    so the session's catalog would then resolve ``${globals:dataset}`` from this one.
    """
    conf_source = conf_source or Path.cwd() / settings.CONF_SOURCE
    if not conf_source.exists():
        raise FileNotFoundError(
            f"no configuration folder {conf_source}: run kedro from the project's root, or "
            "give the configuration with --conf-source"
        )
    loader = settings.CONFIG_LOADER_CLASS(
        conf_source=str(conf_source),
        env=env or os.environ.get("KEDRO_ENV"),
        **settings.CONFIG_LOADER_ARGS,
    )
    return loader["parameters"]


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
        if variant_spec(variant).has_spatial_map:
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
    """Each pipeline with the upstream steps it needs, so that ``kedro run --pipelines X``
    works from raw data: preparing the data is seconds and follows the run's own
    ``data_prep`` parameters, so every pipeline that reads the model input makes it afresh
    (as ``compare`` does). Trained models are not remade: ``evaluate`` and ``generate``
    read those of an earlier ``train`` (the run stops first, naming it, when one is missing).
    """
    plan = pipeline_plan(_run_parameters if _run_parameters is not None else load_parameters())
    variants, study_variants = plan["variants"], plan["study.variants"]
    steerable = plan["steerable"]
    prepared = data_prep.create_pipeline()
    with_extractor = prepared + feature_extractor.create_pipeline()
    pipelines = {
        "data_prep": prepared,
        "feature_extractor": with_extractor,
        "train": prepared + train.create_pipeline(variants),
        "evaluate": with_extractor + evaluate.create_pipeline(variants),
        "generate": prepared + generate.create_pipeline(variants, steerable=steerable),
    }
    pipelines["__default__"] = sum(pipelines.values(), start=Pipeline([]))
    pipelines["compare"] = compare.create_pipeline(
        study_variants, plan["study.seeds"], steerable=steerable
    )
    pipelines["study_report"] = compare.create_report_pipeline()
    return pipelines
