"""Project pipelines.

Each entry named in the ``entries`` parameter (a ``<name>.model`` block: an architecture,
``model.variant``, and its settings) gets a namespaced copy of the train, evaluate and
generate pipelines (``none.train_none``, ``spatial_gate.train_spatial_gate``, ...), and the
``study`` pipeline one copy per entry and seed in ``study`` (``attn-study`` runs each
cell as its own ``kedro run``) (the pattern of Kedro's
"dynamic pipelines" documentation). The lists are the run's own parameters, as Kedro
loaded them (base, the run's ``--env``, conf/local and ``--params``): once a session's
context exists, :class:`attn_pipeline.hooks.RunPlanCheckHook` hands them over with
:func:`use_run_parameters` and the pipelines are built again from them
(:mod:`attn_pipeline.spec.parameters`, where no session is made, reads the files with
Kedro's loader: base and ``KEDRO_ENV``, else local).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kedro.framework.project import pipelines
from kedro.pipeline import Pipeline
from pydantic import ValidationError

from attn_pipeline.pipelines import (
    STUDY_PIPELINE,
    data_prep,
    evaluate,
    feature_extractor,
    generate,
    study,
    train,
)
from attn_pipeline.spec.config import ModelConfig, StudyConfig, refuse_renamed
from attn_pipeline.spec.parameters import run_parameters, set_run_parameters
from attn_pipeline.spec.variants import VariantSpec, variant_spec


def _checked_names(names: Any, what: str, params: dict[str, Any]) -> tuple[str, ...]:
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"parameter '{what}' must be a list of names, got {names!r}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"parameter '{what}' must list distinct names, got {names!r}")
    missing = [name for name in names if "model" not in params.get(name, {})]
    if missing:
        raise ValueError(
            f"parameter '{what}' names {missing}, which have no '<name>.model' block in "
            "conf/base/parameters_train.yml: add one or remove them from the list"
        )
    return tuple(names)


def entries_where(
    names: tuple[str, ...], params: dict[str, Any], has: Callable[[VariantSpec], bool]
) -> set[str]:
    """The entries whose model's variant ``has`` what is asked."""
    chosen = set()
    for name in names:
        try:
            variant = ModelConfig.model_validate(params[name]["model"]).variant
        except ValidationError:
            continue  # the run stops at Kedro's check of typed parameters, which names the key
        if has(variant_spec(variant)):
            chosen.add(name)
    return chosen


def pipeline_plan(params: dict[str, Any]) -> dict[str, Any]:
    """What the pipelines' shape is built from: the entry lists, the study's seeds and
    which entries get a steering node."""
    refuse_renamed(params)
    refuse_renamed(params.get("study") or {}, "study.")
    entries = _checked_names(params.get("entries", []), "entries", params)
    study_config = StudyConfig.model_validate(params.get("study", {}))
    study_entries = _checked_names(list(study_config.entries), "study.entries", params)
    every = tuple(set(entries) | set(study_entries))
    return {
        "entries": entries,
        "study.entries": study_entries,
        "study.seeds": tuple(study_config.seeds),
        # entries with a spatial map generation can edit; entries of scenes of objects
        "steerable": entries_where(every, params, lambda spec: spec.has_spatial_map),
        "scenes": entries_where(every, params, lambda spec: spec.objects),
    }


def use_run_parameters(params: dict[str, Any]) -> None:
    """Build the project's pipelines from ``params`` (a session's parameters, as Kedro's
    configuration loader read them), and drop any built before from other parameters."""
    set_run_parameters(params)
    pipelines.configure(__name__)  # this module: the pipelines are built again on next access


def register_pipelines() -> dict[str, Pipeline]:
    """Each pipeline with the upstream steps it needs, so that ``kedro run --pipelines X``
    works from raw data: preparing the data is seconds and follows the run's own
    ``data_prep`` parameters, so every pipeline that reads the model input makes it afresh
    (as ``study`` does). Trained models are not remade: ``evaluate`` and ``generate``
    read those of an earlier ``train`` (the run stops first, naming it, when one is missing).
    """
    return build_pipelines(run_parameters())


def build_pipelines(params: dict[str, Any]) -> dict[str, Pipeline]:
    """:func:`register_pipelines` for the parameters ``params``."""
    plan = pipeline_plan(params)
    entries, study_entries = plan["entries"], plan["study.entries"]
    steerable, scenes = plan["steerable"], plan["scenes"]
    prepared = data_prep.create_pipeline()
    with_extractor = prepared + feature_extractor.create_pipeline()
    pipelines = {
        "data_prep": prepared,
        "feature_extractor": with_extractor,
        "train": prepared + train.create_pipeline(entries),
        "evaluate": with_extractor + evaluate.create_pipeline(entries, scenes=scenes),
        "generate": prepared
        + generate.create_pipeline(entries, steerable=steerable, scenes=scenes),
    }
    pipelines["__default__"] = sum(pipelines.values(), start=Pipeline([]))
    pipelines[STUDY_PIPELINE] = study.create_pipeline(
        study_entries, plan["study.seeds"], steerable=steerable, scenes=scenes
    )
    pipelines["study_report"] = study.create_report_pipeline()
    return pipelines
