"""The MLflow model registry: every trained generator is a version of
``attn_pipeline.<dataset>.<entry>``, tagged with its test figures and with what measured
them; the alias ``champion`` names the best version by one test metric."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
from unittest import mock

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature

from attn_pipeline.spec.metric_table import MEASURED_WITH, METRICS

# torch is imported where a model is logged: the project settings import this module, and
# every kedro command (`kedro --help` too) imports the settings
if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PREFIX = "attn_pipeline"
CHAMPION = "champion"
#: The run tag naming the registry version of the run's generator (``name/version``).
REGISTERED_TAG = "attn_pipeline.registered_model"
#: The version tag holding a hash of the weights: the same weights are one version.
WEIGHTS_TAG = "weights_hash"


def registered_model_name(dataset: str, entry: str) -> str:
    """``attn_pipeline.mnist.latent``: one registered model per data set and entry."""
    return f"{PREFIX}.{dataset}.{entry}"


def describe_model(dataset: str, entry: str, variant: str) -> str:
    """The registered model's description, shown on its page in the MLflow UI."""
    return (
        f"The generator of attn_pipeline's entry `{entry}` (architecture `{variant}`) trained "
        f"on {dataset}: latent codes z (n, latent_dim), float32, from N(0, I), in; images (n, 1, "
        "height, width) of pixel probabilities out. A version per weights (tag `weights_hash`), "
        "linked to the run that trained it and tagged with its test figures (`test/<metric>`) "
        "and what measured them; `champion` names the best by `registry.champion_metric` among "
        "versions measured alike. Load: mlflow.pytorch.load_model('models:/<name>@champion')."
    )


def version_with_weights(name: str, weights_hash: str) -> ModelVersion | None:
    """The oldest version of ``name`` registered with these weights, if any."""
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    same = [v for v in versions if v.tags.get(WEIGHTS_TAG) == weights_hash]
    return min(same, key=lambda v: int(v.version)) if same else None


def log_sampler_model(sampler: torch.nn.Module, run_id: str) -> str:
    """Log a ``z (B, D) -> images`` module to run ``run_id`` as ``model``, with a signature;
    returns its URI. MLflow's ``pt2`` format (a ``torch.export`` graph) loads without this
    project's code and unpickles nothing; the requirements are given, not inferred (that
    re-imports the model in a subprocess, seconds per model)."""
    import torch  # noqa: PLC0415

    sampler = sampler.cpu()
    example = torch.randn(2, sampler.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        signature = infer_signature(example.numpy(), sampler(example).numpy())
    # MLflow checks the example by loading the model back, on CUDA where torch sees a GPU,
    # and a graph exported with CPU weights cannot load there
    with mock.patch.dict(os.environ, {"MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"}):
        return mlflow.pytorch.log_model(
            sampler,
            name="model",
            run_id=run_id,
            input_example=example.numpy(),
            signature=signature,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        ).model_uri


def register(
    sampler: torch.nn.Module,
    run_id: str,
    name: str,
    tags: dict[str, str],
    description: str,
    lock: Callable[[], AbstractContextManager[Any]],
) -> ModelVersion:
    """The version of ``name`` holding ``sampler``'s weights: the one registered before
    (a run started again trains nothing new), else a new one logged from ``run_id``.
    ``lock`` serialises the look-up and the registration between processes sharing a
    local store; the model is logged outside it (seconds)."""
    from attn_pipeline.data.fingerprints import state_fingerprint  # noqa: PLC0415

    weights = state_fingerprint(sampler.state_dict())
    with lock():
        version = version_with_weights(name, weights)
    if version is None:
        uri = log_sampler_model(sampler, run_id)
        with lock():
            version = version_with_weights(name, weights) or mlflow.register_model(
                uri, name, tags={**tags, WEIGHTS_TAG: weights}
            )
        mlflow.MlflowClient().update_registered_model(name, description=description)
    logger.info("%s version %s holds %s's generator", name, version.version, tags["entry"])
    return version


def tag_version(version: ModelVersion, tags: dict[str, object]) -> None:
    for key, value in tags.items():
        mlflow.MlflowClient().set_model_version_tag(version.name, version.version, key, str(value))


def update_champion(version: ModelVersion, metric_name: str) -> str | None:
    """Point ``@champion`` at the version with the best ``test/<metric_name>`` tag among
    those measured like ``version`` (the same ``MEASURED_WITH`` tags); its number, or None
    when none has the metric."""
    metric = METRICS[metric_name]
    tag = f"test/{metric.name}"
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{version.name}'")
    reference = next(v for v in versions if v.version == version.version).tags
    ranked = [
        (float(v.tags[tag]), int(v.version))
        for v in versions
        if tag in v.tags
        and all(v.tags.get(key) == reference.get(key) for key in MEASURED_WITH)
        and math.isfinite(float(v.tags[tag]))
    ]
    if not ranked:
        return None
    best = str((max if metric.higher_is_better else min)(ranked)[1])
    client.set_registered_model_alias(version.name, CHAMPION, best)
    logger.info("%s@%s is version %s", version.name, CHAMPION, best)
    return best
