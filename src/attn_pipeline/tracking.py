"""MLflow tracking of each entry, in its own run, declared in the catalog.

kedro-mlflow opens one run per ``kedro run``. :class:`EntryRunsHook` gives each pipeline
namespace (an entry, or a study cell) a child run of it, so the MLflow UI's compare view
lines the entries up under the same metric names. Nodes stay free of MLflow: what an
entry's run receives is declared in the catalog, through a dataset's metadata, and
:class:`CatalogLoggingHook` logs it as the dataset is saved::

    metadata:
      entry_run: artifact   # log the saved file as an artifact
      # or: metrics (a dict of floats), params (a nested dict, flattened), tags (a dict),
      # model (an nn.Module: registered, see attn_pipeline.registry.ModelRegistryHook)

Only per-epoch curves are logged from inside a node, through :func:`log_epoch_metrics`,
because they must reach MLflow while training runs. The runs' beginning and end (signals,
orphaned runs) are :mod:`attn_pipeline.run_lifecycle`'s.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Node
from kedro_mlflow.framework.hooks import MlflowHook
from mlflow.entities import RunStatus
from pydantic import BaseModel

from attn_pipeline.run_lifecycle import owner_tags
from attn_pipeline.run_parameters import run_parameters
from attn_pipeline.study import CELL_KEY_TAG, cell_key, parse_cell_namespace

logger = logging.getLogger(__name__)

METADATA_KEY = "entry_run"
_KINDS = ("artifact", "metrics", "params", "tags", "model")


def log_epoch_metrics(epoch: int, metrics: dict[str, float]) -> None:
    """Log one epoch's metrics to the active run (the entry's), if MLflow is on."""
    if mlflow.active_run() is not None:
        mlflow.log_metrics(metrics, step=epoch)


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"latent_dim": 20}} -> {"model.latent_dim": 20}``."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, prefix=f"{name}.")
        else:
            flat[name] = value
    return flat


class FlatParamsMlflowHook(MlflowHook):
    """kedro-mlflow's hook, registered by the project (settings.py) in place of the plugin's
    own, so that typed parameters reach the parent run as flattened values
    (``train.epochs = 8``): kedro-mlflow flattens dicts only, and Kedro hands the nodes
    this project's pydantic configs, which it would log as one repr each."""

    @hook_impl
    def before_node_run(
        self, node: Node, catalog: CatalogProtocol, inputs: dict[str, Any], is_async: bool
    ) -> None:
        plain = {
            name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            for name, value in inputs.items()
        }
        super().before_node_run(node=node, catalog=catalog, inputs=plain, is_async=is_async)


def _git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def entry_tags(run_params: dict[str, Any], namespace: str) -> dict[str, str]:
    """What a run's ``params`` output says of it, as tags: ``entry`` (the name in
    ``entries`` / ``study.entries``; the namespace in a default run), ``variant`` (its
    architecture), ``seed`` (a study overrides it) and ``precision``."""
    return {
        "entry": str(run_params.get("entry", namespace)),
        "variant": str(run_params.get("model", {}).get("variant", namespace)),
        "seed": str(run_params.get("train", {}).get("seed", "")),
        "precision": str(run_params.get("precision_used", "fp32")),
    }


def logged_as(catalog: CatalogProtocol | None, dataset_name: str) -> str | None:
    """How a dataset's saved data goes to its entry's run (its ``entry_run`` metadata), or
    None. Raises ``ValueError`` for a value that is not one of the kinds."""
    dataset = catalog.get(dataset_name) if catalog is not None else None
    kind = (getattr(dataset, "metadata", None) or {}).get(METADATA_KEY)
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"catalog entry {dataset_name}: {METADATA_KEY} must be one of {_KINDS}")
    return kind


class EntryRunsHook:
    """One nested MLflow run per namespace (an entry, a study cell), under kedro-mlflow's
    run: active while the namespace's nodes run, and on demand (:meth:`activated`)."""

    def __init__(self) -> None:
        self._params: dict[str, Any] = {}
        self._project_path = Path.cwd()
        self._runs: dict[str, str] = {}  # namespace -> run id
        self._activated: set[str] = set()  # nodes whose run this hook opened

    @hook_impl
    def after_context_created(self, context) -> None:
        self._params = run_parameters()  # read by RunPlanCheckHook (tryfirst)
        self._project_path = Path(context.project_path)
        self._runs.clear()

    def has_run(self, namespace: str | None) -> bool:
        return namespace is not None and namespace in self._runs

    @contextmanager
    def activated(self, namespace: str) -> Iterator[None]:
        """The namespace's run, active for the block; an error ends it FAILED, an interrupt
        KILLED (not ``with mlflow.start_run()``, which ends it FAILED on Ctrl-C as well)."""
        mlflow.start_run(run_id=self._runs[namespace], nested=True)
        try:
            yield
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run()

    def _tags(self, namespace: str) -> dict[str, str]:
        tags = {
            "namespace": namespace,
            "dataset": str(self._params.get("dataset", "")),
            **owner_tags(),
        }
        commit = _git_commit(self._project_path)
        if commit:
            tags["mlflow.source.git.commit"] = commit
        cell = parse_cell_namespace(namespace)
        if cell is not None:  # a study cell: its key lets later studies find it finished
            tags[CELL_KEY_TAG] = cell_key(self._params, *cell)
        return tags

    def _open(self, namespace: str) -> None:
        """Make the namespace's run the active one (creating it on first use)."""
        if namespace in self._runs:
            mlflow.start_run(run_id=self._runs[namespace], nested=True)
        else:
            run = mlflow.start_run(run_name=namespace, nested=True, tags=self._tags(namespace))
            self._runs[namespace] = run.info.run_id
            logger.info("MLflow run '%s' (%s) opened", namespace, run.info.run_id)

    # trylast: kedro-mlflow re-activates its own run in before_node_run, which fails if a
    # nested run is already active, so this hook must come after it.
    @hook_impl(trylast=True)
    def before_node_run(self, node: Node) -> None:
        if node.namespace and mlflow.active_run() is not None:
            self._open(node.namespace)
            self._activated.add(node.name)

    @hook_impl(tryfirst=True)
    def after_node_run(self, node: Node) -> None:
        if node.name in self._activated:
            self._activated.discard(node.name)
            mlflow.end_run()

    @hook_impl(tryfirst=True)
    def on_node_error(self, error: Exception, node: Node) -> None:
        if node.name in self._activated:
            self._activated.discard(node.name)
            # an interrupt's runs end KILLED on the way out (attn_pipeline.run_lifecycle)
            if not isinstance(error, KeyboardInterrupt):
                mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))


class CatalogLoggingHook:
    """Logs what a namespace's node saves to the namespace's run, as the dataset's
    ``entry_run`` metadata says (see the module)."""

    def __init__(self, runs: EntryRunsHook) -> None:
        self._runs = runs
        self._catalog: CatalogProtocol | None = None

    @hook_impl
    def after_catalog_created(self, catalog: CatalogProtocol) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Node) -> None:
        if not self._runs.has_run(node.namespace):
            return
        kind = logged_as(self._catalog, dataset_name)
        if kind is None or kind == "model":
            return
        with self._runs.activated(node.namespace):
            if kind == "artifact":
                mlflow.log_artifact(str(self._catalog.get(dataset_name)._filepath))  # noqa: SLF001
            elif kind == "metrics":
                mlflow.log_metrics({k: float(v) for k, v in data.items()})
            elif kind == "params":
                mlflow.log_params(flatten(data))
                mlflow.set_tags(entry_tags(data, node.namespace))
            else:
                mlflow.set_tags({k: str(v) for k, v in data.items()})
