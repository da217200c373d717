"""Checks that need more than one parameter or the catalog, run before the first node.

Every ``kedro`` command of the project imports this module (through ``settings.py``), ``kedro
--help`` included: torch and the pipelines are imported by the hooks' methods, when a run
starts, not here.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import yaml
from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines as registered_pipelines
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline

from attn_pipeline.data.folder_lock import ProjectRunLock, output_groups
from attn_pipeline.pipelines import GENERATE_TAG, STUDY_PIPELINE, TRAIN_TAG
from attn_pipeline.spec.config import (
    PARAMETER_BLOCKS,
    ConfigError,
    DataPrepConfig,
    GenerateConfig,
    ScaleRectangleEdit,
    TrainConfig,
    check_values,
)
from attn_pipeline.spec.parameters import ENVIRONMENT_FILE
from attn_pipeline.tracking.runs import GIVEN_RUN

logger = logging.getLogger(__name__)

#: Pipelines never named as the fix for a missing input: they run far more than it.
_COMPOSITE_PIPELINES = ("__default__", STUDY_PIPELINE)


class MissingInputError(click.ClickException):
    """A dataset the run reads does not exist and no node of the run makes it."""


def unknown_keys(params: Mapping[str, Any]) -> set[str]:
    """Top-level keys the project does not know: not a typed block, and not an entry (a
    block with a ``model``): ``trian: {epochs: 3}`` would otherwise be ignored in silence."""
    entries = {k for k, v in params.items() if isinstance(v, Mapping) and "model" in v}
    return set(params) - set(PARAMETER_BLOCKS) - entries


def _file_keys(folder: Path) -> dict[Path, set[str]]:
    """The top-level keys of each parameters file of a configuration environment's folder
    (none where it is not a folder: a packaged project's tarball)."""
    return {
        path: set(yaml.safe_load(path.read_text()) or {})
        for path in sorted([*folder.glob("parameters*.yml"), *folder.glob(ENVIRONMENT_FILE)])
    }


def _where(key: str, loader: Any) -> str:
    """Where a top-level key comes from: ``--params``, else the parameters files of the
    run's environments that hold it."""
    if key in (loader.runtime_params or {}):
        return "--params"
    folder = Path(str(loader.conf_source))
    envs = (loader.base_env, loader.env or loader.default_run_env)
    files = [str(p) for env in envs for p, keys in _file_keys(folder / env).items() if key in keys]
    return ", ".join(files) or "the parameters files"


def check_parameter_keys(params: Mapping[str, Any], loader: Any) -> None:
    unknown = unknown_keys(params)
    if not unknown:
        return
    known = sorted(set(params) - unknown)
    named = []
    for key in sorted(unknown):
        nearest = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean '{nearest[0]}'?)" if nearest else ""
        named.append(f"{_where(key, loader)} names '{key}'{hint}")
    raise ConfigError(
        f"{'; '.join(named)}, which the project does not know: the top-level parameters are "
        f"{known} and entries (blocks with a 'model'). Fix the name and run again."
    )


def check_inputs_exist(
    pipeline: Pipeline,
    catalog: CatalogProtocol,
    producers: Mapping[str, Pipeline],
    dataset: str,
    env_option: str = "",
) -> None:
    """Stop before any node when a dataset the run reads is missing, naming the command that
    makes it: the smallest pipeline that writes it or, for raw files, the fetch."""
    missing = [
        name
        for name in sorted(pipeline.inputs())
        if not name.startswith("params:")
        and name != "parameters"
        and not getattr(catalog.get(name), "missing_ok", False)  # loads as None when absent
        and not catalog.exists(name)
    ]
    lines = []
    for name in missing:
        where = catalog.config_resolver.resolve_pattern(name).get("filepath")
        if name.startswith("raw_"):  # its folder: the raw data set (globals' raw_data)
            fix = f"attn-fetch-data {Path(str(where)).parent.name if where else dataset}"
        else:
            makers = sorted(
                (len(p.nodes), p_name)
                for p_name, p in producers.items()
                if p_name not in _COMPOSITE_PIPELINES and name in p.all_outputs()
            )
            fix = f"kedro run --pipelines {makers[0][1]}{env_option}" if makers else "kedro run"
        lines.append(f"{f'{name} ({where})' if where else name} does not exist: run `{fix}` first")
    if lines:
        raise MissingInputError("; ".join(dict.fromkeys(lines)))


class RunPlanCheckHook:
    """Fail fast when the run cannot work: unknown parameter keys, a study cell outside
    ``attn-study``, missing inputs, a budget or device the run cannot have. Also hands the
    run's parameters to the pipeline registry, and holds the project folder's outputs the
    run writes (:class:`ProjectRunLock`) while it runs."""

    # tryfirst: the pipelines are built from this run's parameters before any other hook
    # reads them (Kedro's typed-parameter validation goes through the pipelines)
    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        from attn_pipeline.pipeline_registry import use_run_parameters  # noqa: PLC0415

        self._loader = loader = context.config_loader
        self._params = loader["parameters"]
        check_values(self._params)  # before Kedro's own check, whose error is a traceback
        use_run_parameters(self._params)
        self._lock = ProjectRunLock(Path(context.project_path))
        # Kedro reads base and the run's environment: under --env, conf/local is not read
        local = Path(str(loader.conf_source)) / loader.default_run_env
        if loader.env and loader.env != loader.default_run_env:
            unread = sorted(set().union(*_file_keys(local).values()))
            if unread:
                logger.warning(
                    "--env %s: %s is not read (Kedro reads base and the named environment): its "
                    "keys %s do not apply; put them in conf/%s or give them with --params",
                    loader.env,
                    local,
                    ", ".join(unread),
                    loader.env,
                )

    # tryfirst: a run that cannot work stops before kedro-mlflow opens its MLflow run
    # (Kedro calls no error hook for a failure here, so that run would stay open)
    @hook_impl(tryfirst=True)
    def before_pipeline_run(
        self, run_params: dict, pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        from attn_pipeline.models.checkpoint import DATASET, check_trained_on  # noqa: PLC0415

        dataset = str(self._params.get("dataset", ""))
        namespaces = {node.namespace for node in pipeline.nodes}
        try:
            check_parameter_keys(self._params, self._loader)
            if any(n and n.startswith("study.") for n in namespaces) and not os.environ.get(
                GIVEN_RUN
            ):
                raise ConfigError(
                    "the study's cells run through `attn-study`, which gives each its own "
                    "process and MLflow run and then compares them: run `attn-study`"
                )
            env = run_params.get("env")
            option = f" --env {env}" if env and env != "local" else ""
            check_inputs_exist(pipeline, catalog, registered_pipelines, dataset, option)
            for split in ("train", "test"):  # images and labels from one release
                self._check_raw_pair(catalog, pipeline, split)
            for name in sorted(pipeline.inputs()):  # models the run reads, not trains
                if name.endswith(".checkpoint"):
                    try:
                        check_trained_on(catalog.load(name), {DATASET: dataset})
                    except ValueError as error:
                        raise ConfigError(f"{name}: {error}") from None
            if any(TRAIN_TAG in node.tags for node in pipeline.nodes):
                self._check_training(pipeline, catalog)
            if any(GENERATE_TAG in node.tags for node in pipeline.nodes):
                self._check_steering(catalog)
        except click.ClickException:
            logger.error("run stopped before any node ran")
            raise
        self._lock.acquire(output_groups(namespaces, dataset))  # last: a refused run holds none

    def _check_raw_pair(self, catalog: CatalogProtocol, pipeline: Pipeline, split: str) -> None:
        names = (f"raw_{split}_images", f"raw_{split}_labels")
        if not set(names) <= pipeline.inputs():
            return
        counts = [catalog.get(name).item_count() for name in names]
        if counts[0] != counts[1]:
            paths = [catalog.config_resolver.resolve_pattern(n)["filepath"] for n in names]
            folder = Path(paths[0]).parent.name
            raise ConfigError(
                f"{paths[0]} has {counts[0]} images but {paths[1]} has {counts[1]} labels: the "
                "two files come from different releases or one is damaged. Fetch them again "
                f"with `attn-fetch-data {folder} --force`."
            )

    def _check_training(self, pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        from attn_pipeline.training.loop import resolve_device  # noqa: PLC0415

        train = TrainConfig.model_validate(self._params.get("train", {}))
        try:
            resolve_device(train.device)
        except RuntimeError as error:
            raise ConfigError(str(error)) from None
        if "train_set" in pipeline.all_outputs():
            raw = catalog.get("raw_train_images")
            if raw is not None and raw.exists():
                prep = DataPrepConfig.model_validate(self._params.get("data_prep", {}))
                train.check_fits(prep.split_sizes(raw.item_count())[0])
        elif catalog.exists("train_set"):
            train.check_fits(len(catalog.load("train_set")["images"]))

    def _check_steering(self, catalog: CatalogProtocol) -> None:
        """A steering rectangle against the images' side (the canvas, else the raw test
        images' header): refused before the training that comes first, not after it."""
        steering = GenerateConfig.model_validate(self._params.get("generate", {})).steering
        if not isinstance(steering, ScaleRectangleEdit):
            return
        side = DataPrepConfig.model_validate(self._params.get("data_prep", {})).canvas_size
        raw = catalog.get("raw_test_images")
        if side is None and raw is not None and raw.exists():
            side = raw.declared_item_shape()[-1]
        if side is not None:
            steering.pixels(side)

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._lock.release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._lock.release()
