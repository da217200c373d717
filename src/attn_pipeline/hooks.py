"""Checks that need more than one parameters file or the catalog, run before the first node."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import click
from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines as registered_pipelines
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline

from attn_pipeline.config import ConfigError, DataPrepConfig, TrainConfig
from attn_pipeline.pipeline_registry import use_run_parameters
from attn_pipeline.pipelines import TRAIN_TAG
from attn_pipeline.run_guard import ProjectRunLock, output_groups

logger = logging.getLogger(__name__)

#: Pipelines never named as the fix for a missing input: they run far more than what is
#: missing (the smallest pipeline that writes it is named).
_COMPOSITE_PIPELINES = ("__default__", "compare")


class MissingInputError(click.ClickException):
    """A dataset the run reads does not exist and no node of the run makes it. ``kedro run``
    prints the message as one line (no traceback) and exits 1."""


def _refuse_unknown(unknown: Collection[str], known: Collection[str], where: str) -> None:
    if not unknown:
        return
    described = []
    for key in sorted(unknown):
        nearest = difflib.get_close_matches(key, list(known), n=1)
        described.append(f"'{key}'" + (f" (did you mean '{nearest[0]}'?)" if nearest else ""))
    raise ConfigError(
        f"{where} names {', '.join(described)}, which conf/base's parameters files do not "
        f"have; the top-level parameters are {sorted(known)}. Fix the name and run again."
    )


def check_runtime_params(runtime_params: Mapping[str, Any], known: Collection[str]) -> None:
    """Refuse ``--params`` whose top-level key no parameters file has: a typo would
    otherwise be ignored in silence (keys inside a block are checked by the typed configs)."""
    _refuse_unknown(set(runtime_params) - set(known), known, "--params")


def check_parameter_files(
    base: Mapping[Path, Mapping[str, Any]],
    overrides: Mapping[Path, Mapping[str, Any]],
    entries: Collection[str],
) -> set[str]:
    """Refuse a top-level key of an environment's (or ``conf/local``'s) parameters file that
    base does not have, naming the file: ``trian: {epochs: 3}`` would otherwise train the
    default budget in silence. A block for an entry the run lists (``entries``,
    ``study.entries``) is allowed: an environment may define its own entries.
    Returns the keys known to the run (base's and those entries')."""
    known = {key for config in base.values() for key in config} | set(entries)
    for path, config in sorted(overrides.items()):
        _refuse_unknown(set(config) - known, known, f"{path}")
    return known


def _listed_entries(params: Mapping[str, Any]) -> set[str]:
    study = params.get("study") or {}
    return set(params.get("entries") or []) | set(
        study.get("entries") or [] if isinstance(study, Mapping) else []
    )


def check_inputs_exist(
    pipeline: Pipeline,
    catalog: CatalogProtocol,
    producers: Mapping[str, Pipeline],
    dataset: str,
    env_option: str = "",
) -> None:
    """Stop before any node when a dataset the run reads is missing, naming the command that
    makes it: the pipeline that writes it (smallest first) or, for raw files, the fetch."""
    missing = [
        name
        for name in sorted(pipeline.inputs())
        if not name.startswith("params:")
        and name != "parameters"
        and not getattr(catalog.get(name), "missing_ok", False)  # loads as None when absent
        and not catalog.exists(name)
    ]
    if not missing:
        return
    lines = []
    for name in missing:
        described = catalog.get(name)
        where = getattr(described, "_filepath", None) or getattr(described, "_path", None)
        what = f"{name} ({where})" if where else name
        if name.startswith("raw_"):  # its folder: the raw data set (globals' raw_data)
            fix = f"attn-fetch-data {Path(str(where)).parent.name if where else dataset}"
        else:
            makers = sorted(
                (len(p.nodes), p_name)
                for p_name, p in producers.items()
                if p_name not in _COMPOSITE_PIPELINES and name in p.all_outputs()
            )
            fix = f"kedro run --pipelines {makers[0][1]}{env_option}" if makers else "kedro run"
        lines.append(f"{what} does not exist: run `{fix}` first")
    raise MissingInputError("; ".join(dict.fromkeys(lines)))


class RunPlanCheckHook:
    """Fail fast when the run cannot work: unknown parameter keys, missing inputs, a training
    budget that does not fit the data the run will have.

    Single values are checked by Kedro against the typed configs; what is checked here
    needs more than one of them or the catalog. It also hands the run's parameters to the
    pipeline registry, which builds the variant and study pipelines from them.
    """

    def __init__(self) -> None:
        self._params: dict[str, Any] = {}
        self._config_loader: Any = None
        self._lock: ProjectRunLock | None = None

    # tryfirst: the pipelines must be built from this run's parameters before any other
    # hook reads them (Kedro's typed-parameter validation goes through the pipelines)
    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        self._config_loader = context.config_loader
        self._params = context.config_loader["parameters"]
        use_run_parameters(self._params)
        self._lock = ProjectRunLock(Path(context.project_path))

    def _check_parameter_keys(self) -> None:
        """Every top-level key, wherever it comes from, is one the project knows. Reads the
        files through the session's own loader, so ``--conf-source`` (a folder or the
        packaged project's tarball) is honoured."""
        base, overrides, *_ = self._config_loader._read_raw_config("parameters")  # noqa: SLF001
        known = check_parameter_files(base, overrides, _listed_entries(self._params))
        check_runtime_params(self._config_loader.runtime_params or {}, known)

    def _expected_train_size(self, pipeline: Pipeline, catalog: CatalogProtocol) -> int | None:
        if "train_set" in pipeline.all_outputs():
            raw = catalog.get("raw_train_images")
            if raw is None or not raw.exists():
                return None  # the load will fail with its own message
            prep = DataPrepConfig.model_validate(self._params.get("data_prep", {}))
            return prep.split_sizes(raw.item_count())[0]
        if catalog.exists("train_set"):
            return len(catalog.load("train_set")["images"])
        return None

    # tryfirst: a run that cannot work must stop before kedro-mlflow opens its MLflow run;
    # Kedro calls no error hook for a failure here, so that run would be left open.
    @hook_impl(tryfirst=True)
    def before_pipeline_run(
        self, run_params: dict, pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        try:
            self._check_parameter_keys()
            env = run_params.get("env")
            check_inputs_exist(
                pipeline,
                catalog,
                registered_pipelines,
                str(self._params.get("dataset", "")),
                f" --env {env}" if env and env != "local" else "",
            )
            self._check_budget(pipeline, catalog)
        except click.ClickException:
            logger.error("run stopped before any node ran")
            raise
        if self._lock is not None:  # last: a refused run holds nothing
            namespaces = {node.namespace for node in pipeline.nodes}
            dataset = str(self._params.get("dataset", ""))
            self._lock.acquire(output_groups(namespaces, dataset))

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
        if n_train is not None:
            train.check_fits(n_train)
