"""The MLflow model registry: every trained generator is a version of
``attn_pipeline.<dataset>.<entry>``, tagged with its test metrics and with what they were
measured with; the alias ``champion`` names the best version by one test metric.

Called by :class:`attn_pipeline.tracking.VariantRunsHook` as a run's outputs are saved;
nodes know nothing of it.
"""

from __future__ import annotations

import logging
import math

import mlflow
from mlflow.entities.model_registry import ModelVersion

from attn_pipeline.metrics.table import MEASURED_WITH

logger = logging.getLogger(__name__)

PREFIX = "attn_pipeline"
CHAMPION = "champion"
#: The version tag holding a hash of the generator's weights: the same weights (a cell run
#: again, which trains nothing) are the same version, not a new one.
WEIGHTS_TAG = "weights_hash"


def registered_model_name(dataset: str, entry: str) -> str:
    """``attn_pipeline.mnist.latent``: one registered model per data set and study entry."""
    return f"{PREFIX}.{dataset}.{entry}"


def describe_model(dataset: str, entry: str, variant: str) -> str:
    """The registered model's description, shown on its page in the MLflow UI."""
    return (
        f"The generator of attn_pipeline's entry `{entry}` (architecture `{variant}`), "
        f"trained on {dataset}: latent codes z (n, latent_dim), float32, drawn from N(0, I), "
        "in; images (n, 1, height, width) of pixel probabilities in [0, 1] out. Each version "
        "is one training run (the run that logged it is linked) at the project's training "
        "budget. Version tags: `entry`, `variant`, `seed`; `weights_hash` (the same weights "
        "are one version); `test/<metric>`, the run's test figures, with what measured them "
        "(`fid_n_samples`, `nll_iw_k`, `nll_iw_n_images`, `feature_extractor_hash`). The "
        f"alias `{CHAMPION}` names the version with the best `registry.champion_metric` among "
        "versions measured alike. Load: mlflow.pytorch.load_model('models:/<name>@champion'); "
        "no project code is needed."
    )


def register(model_uri: str, name: str, tags: dict[str, str], description: str) -> ModelVersion:
    """A version of ``name`` for the logged model ``model_uri`` (linked to its run), one per
    weights (``tags[WEIGHTS_TAG]``) however many runs register them at once; the registered
    model carries ``description``.

    The store has no "register if absent": runs that finish together may all find no
    version with their weights and register one each. So each registers, then looks again,
    and all keep the oldest version of those weights, the newer ones deleting their own:
    versions are numbered in the order they are made, so every run picks the same one."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    client = mlflow.MlflowClient()
    client.update_registered_model(name, description=description)
    oldest = version_with_weights(name, tags[WEIGHTS_TAG])
    if oldest is not None and oldest.version != version.version:
        client.delete_model_version(name, version.version)
        logger.info(
            "%s: version %s has these weights already (registered at once)", name, oldest.version
        )
        return oldest
    logger.info("registered %s version %s", name, version.version)
    return version


def version_with_weights(name: str, weights_hash: str) -> ModelVersion | None:
    """The version of ``name`` registered with these weights, if any (the oldest)."""
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")  # [] if none
    same = [v for v in versions if v.tags.get(WEIGHTS_TAG) == weights_hash]
    return min(same, key=lambda v: int(v.version)) if same else None


def tag_version(version: ModelVersion, tags: dict[str, object]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, str(value))


def update_champion(name: str, metric: str, higher_is_better: bool, newest: str) -> str | None:
    """Point ``name@champion`` at the version with the best ``metric`` tag among the versions
    measured like version ``newest`` (the same ``MEASURED_WITH`` tags); returns its number,
    or None when no such version has the metric."""
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    reference = next(v for v in versions if v.version == newest).tags
    ranked = [
        (float(v.tags[metric]), int(v.version))
        for v in versions
        if metric in v.tags
        and all(v.tags.get(key) == reference.get(key) for key in MEASURED_WITH)
        and math.isfinite(float(v.tags[metric]))
    ]
    if not ranked:
        return None
    best = (max if higher_is_better else min)(ranked)[1]
    client.set_registered_model_alias(name, CHAMPION, str(best))
    return str(best)
