"""Checks that need more than one parameters file, run before the first node."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline

from attn_pipeline.config import ConfigError, DataPrepConfig, TrainConfig
from attn_pipeline.pipeline_registry import load_parameters, use_run_parameters
from attn_pipeline.pipelines.train.pipeline import TRAIN_TAG
from attn_pipeline.run_guard import ProjectRunLock, output_groups

logger = logging.getLogger(__name__)


def check_runtime_params(runtime_params: dict[str, Any], known: Collection[str]) -> None:
    """Refuse ``--params`` whose top-level key no parameters file has: a typo would
    otherwise be ignored in silence (keys inside a block are checked by the typed configs)."""
    unknown = sorted(set(runtime_params) - set(known))
    if not unknown:
        return
    described = []
    for key in unknown:
        nearest = difflib.get_close_matches(key, list(known), n=1)
        described.append(f"'{key}'" + (f" (did you mean '{nearest[0]}'?)" if nearest else ""))
    raise ConfigError(
        f"--params names {', '.join(described)}, which no parameters file has; the "
        f"top-level parameters are {sorted(known)}. Fix the name and run again."
    )


class RunPlanCheckHook:
    """Fail fast when the training budget cannot work with the data the run will have.

    Single values are checked by Kedro against the typed configs; what is checked here
    needs two of them (``train.batch_size`` against the size ``data_prep`` will produce).
    It also hands the run's parameters to the pipeline registry, which builds the variant
    and study pipelines from them.
    """

    def __init__(self) -> None:
        self._params: dict[str, Any] = {}
        self._runtime_params: dict[str, Any] = {}
        self._env: str | None = None
        self._lock: ProjectRunLock | None = None

    # tryfirst: the pipelines must be built from this run's parameters before any other
    # hook reads them (Kedro's typed-parameter validation goes through the pipelines)
    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        self._params = context.config_loader["parameters"]
        use_run_parameters(self._params)
        self._runtime_params = dict(context.config_loader.runtime_params or {})
        self._env = context.env
        self._lock = ProjectRunLock(Path(context.project_path))

    def _expected_train_size(self, pipeline: Pipeline, catalog: CatalogProtocol) -> int | None:
        if "train_set" in pipeline.all_outputs():
            prep = DataPrepConfig.model_validate(self._params.get("data_prep", {}))
            if prep.subset_size is not None:
                return prep.subset_size - prep.val_size
            raw = catalog.get("raw_train_images")
            if raw is None or not raw.exists():
                return None  # the load will fail with its own message
            return raw.item_count() - prep.val_size
        if catalog.exists("train_set"):
            return len(catalog.load("train_set")["images"])
        return None

    # tryfirst: a run that cannot work must stop before kedro-mlflow opens its MLflow run;
    # Kedro calls no error hook for a failure here, so that run would be left open.
    @hook_impl(tryfirst=True)
    def before_pipeline_run(
        self, run_params: dict, pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        check_runtime_params(self._runtime_params, load_parameters(env=self._env))
        self._check_budget(pipeline, catalog)
        if self._lock is not None:  # last: a refused run holds nothing
            self._lock.acquire(output_groups({node.namespace for node in pipeline.nodes}))

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._lock is not None:
            self._lock.release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _check_budget(self, pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        if not any(TRAIN_TAG in node.tags for node in pipeline.nodes):
            return
        train = TrainConfig.model_validate(self._params.get("train", {}))
        n_train = self._expected_train_size(pipeline, catalog)
        if n_train is None:
            return
        try:
            train.check_fits(n_train)
        except ConfigError:
            logger.error("run stopped before any node ran: the configuration cannot work")
            raise
