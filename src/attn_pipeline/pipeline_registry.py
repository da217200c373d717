"""Project pipelines.

Each variant named in the ``variants`` parameter gets a namespaced copy of the train,
evaluate and generate pipelines (``none.train_model``, ``latent.train_model``, ...), so the
variant list is read from the configuration here, before Kedro builds the pipelines (the
pattern of Kedro's "dynamic pipelines" documentation).
"""

from __future__ import annotations

from pathlib import Path

from kedro.framework.project import settings
from kedro.pipeline import Pipeline

from attn_pipeline.pipelines import data_prep, evaluate, generate, train

DEFAULT_VARIANTS = ("none", "latent")


def configured_variants(conf_source: Path | None = None) -> tuple[str, ...]:
    """The ``variants`` list from ``parameters*.yml`` (base overlaid by local)."""
    conf_source = conf_source or Path.cwd() / settings.CONF_SOURCE
    if not conf_source.is_dir():
        return DEFAULT_VARIANTS
    loader = settings.CONFIG_LOADER_CLASS(
        conf_source=str(conf_source), **settings.CONFIG_LOADER_ARGS
    )
    variants = loader["parameters"].get("variants", DEFAULT_VARIANTS)
    if not variants or len(set(variants)) != len(variants):
        raise ValueError(f"parameter 'variants' must list distinct names, got {variants!r}")
    return tuple(variants)


def register_pipelines() -> dict[str, Pipeline]:
    variants = configured_variants()
    pipelines = {
        "data_prep": data_prep.create_pipeline(),
        "train": train.create_pipeline(variants),
        "evaluate": evaluate.create_pipeline(variants),
        "generate": generate.create_pipeline(variants),
    }
    pipelines["__default__"] = sum(pipelines.values(), start=Pipeline([]))
    return pipelines
