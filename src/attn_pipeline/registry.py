"""The MLflow model registry: every trained generator is a version of
``attn_pipeline.<dataset>.<entry>``, tagged with its test metrics and with what they were
measured with; the alias ``champion`` names the best version by one test metric.

:class:`ModelRegistryHook` logs and registers each entry's generator as a run saves it (the
catalog's ``entry_run: model``), and tags the version with the run's test figures; nodes
know nothing of it.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import mlflow
import torch
from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Node
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo

from attn_pipeline.config import RegistryConfig
from attn_pipeline.fingerprints import state_fingerprint
from attn_pipeline.metric_table import MEASURED_WITH, METRICS
from attn_pipeline.run_parameters import run_parameters
from attn_pipeline.tracking import EntryRunsHook, entry_tags, logged_as

logger = logging.getLogger(__name__)

PREFIX = "attn_pipeline"
CHAMPION = "champion"
#: The run tag naming the registry version of the run's generator (``name/version``).
REGISTERED_TAG = "attn_pipeline.registered_model"
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


def log_sampler_model(sampler: torch.nn.Module) -> ModelInfo:
    """Log a ``z (B, D) -> images`` module to the active run as ``model``, with a signature.

    Saved in MLflow's ``pt2`` format (a ``torch.export`` graph): it loads without this
    project's code and without unpickling anything. The requirements are given, not
    inferred: inference re-imports the model in a subprocess and costs seconds per model.
    """
    sampler = sampler.cpu()
    example = torch.randn(2, sampler.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = sampler(example)
    # MLflow checks the input example by loading the model back, on CUDA where torch sees a
    # GPU, and a graph exported with CPU weights cannot load there (seen on an H100)
    previous = os.environ.get("MLFLOW_DEFAULT_PREDICTION_DEVICE")
    os.environ["MLFLOW_DEFAULT_PREDICTION_DEVICE"] = "cpu"
    try:
        return mlflow.pytorch.log_model(
            sampler,
            name="model",
            input_example=example.numpy(),
            signature=infer_signature(example.numpy(), output.numpy()),
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    finally:
        if previous is None:
            del os.environ["MLFLOW_DEFAULT_PREDICTION_DEVICE"]
        else:
            os.environ["MLFLOW_DEFAULT_PREDICTION_DEVICE"] = previous


class ModelRegistryHook:
    """Registers each namespace's generator once both it and its entry are saved (the train
    node saves them in either order), tags the version with the test figures, and moves
    the alias ``champion`` as the evaluation's tags arrive."""

    def __init__(self, runs: EntryRunsHook) -> None:
        self._runs = runs
        self._catalog: CatalogProtocol | None = None
        self._dataset = ""
        self._config = RegistryConfig()
        # namespace -> its generator and the hash of its weights, until registered
        self._models: dict[str, tuple[torch.nn.Module, str]] = {}
        self._entries: dict[str, dict[str, str]] = {}  # namespace -> its entry tags
        self._versions: dict[str, ModelVersion] = {}  # namespace -> its registered version

    @hook_impl
    def after_context_created(self, context) -> None:
        params = run_parameters()  # read by RunPlanCheckHook (tryfirst)
        self._dataset = str(params.get("dataset", ""))
        self._config = RegistryConfig.model_validate(params.get("registry", {}))
        self._models.clear()
        self._entries.clear()
        self._versions.clear()

    @hook_impl
    def after_catalog_created(self, catalog: CatalogProtocol) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Node) -> None:
        namespace = node.namespace
        if not self._runs.has_run(namespace):
            return
        kind = logged_as(self._catalog, dataset_name)
        if kind == "model":
            self._models[namespace] = (data, state_fingerprint(data.state_dict()))
        elif kind == "params":
            self._entries[namespace] = entry_tags(data, namespace)
        elif kind in ("metrics", "tags") and namespace in self._versions:
            tag_version(self._versions[namespace], data)
            if kind == "tags":  # the evaluation's description: the figures are all in
                self._update_champion(self._versions[namespace])
            return
        else:
            return
        self._register(namespace)

    def _register(self, namespace: str) -> None:
        """Log the namespace's generator to its run and register it. Weights registered
        before (a finished cell or run started again: nothing trained) keep their version,
        named in the run's tags, rather than get a copy."""
        both_known = namespace in self._models and namespace in self._entries
        if namespace in self._versions or not both_known:
            return
        entry = self._entries[namespace]
        name = registered_model_name(self._dataset, entry["entry"])
        sampler, weights = self._models.pop(namespace)
        with self._runs.activated(namespace):
            version = version_with_weights(name, weights)
            if version is None:
                version = register(
                    log_sampler_model(sampler).model_uri,
                    name,
                    tags={**entry, WEIGHTS_TAG: weights},
                    description=describe_model(self._dataset, entry["entry"], entry["variant"]),
                )
            else:
                logger.info("%s version %s has these weights already", name, version.version)
            mlflow.set_tag(REGISTERED_TAG, f"{version.name}/{version.version}")
        self._versions[namespace] = version

    def _update_champion(self, version: ModelVersion) -> None:
        metric = METRICS[self._config.champion_metric]
        champion = update_champion(
            version.name, f"test/{metric.name}", metric.higher_is_better, version.version
        )
        if champion is not None:
            logger.info("%s@%s is version %s", version.name, CHAMPION, champion)
