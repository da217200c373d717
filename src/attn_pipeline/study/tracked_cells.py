"""Kedro dataset: the rows of a study's cells, read from the tracking server alone."""

from __future__ import annotations

import json
import os
from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError

#: Tag of a study's run naming a cell run it reuses (finished in an earlier study):
#: ``<prefix><namespace>`` -> run id.
REUSED_CELL_TAG_PREFIX = "attn_pipeline.reused_cell."
#: The artifact of a cell's run holding its row of the study (its ``summary``).
SUMMARY_ARTIFACT = "summary.json"


class MlflowStudyCellsDataset(AbstractDataset[None, dict[str, dict[str, Any]]]):
    """The study's cells as ``{namespace: row}``, from the study's MLflow run (the one
    ``attn-study`` hands the comparison's process): its FINISHED child runs (the newest of
    a namespace, if a cell ran twice) and the runs its ``attn_pipeline.reused_cell.*`` tags
    name. Each row is the cell's ``summary.json`` artifact, read through the tracking
    server: the machines that ran the cells share nothing else with this one. Read-only."""

    def __init__(self, metadata: dict[str, Any] | None = None) -> None:
        self.metadata = metadata

    def load(self) -> dict[str, dict[str, Any]]:
        from attn_pipeline.tracking.runs import GIVEN_RUN  # noqa: PLC0415 (settings import this)

        study_run = os.environ.get(GIVEN_RUN)
        if not study_run:
            raise DatasetError(
                "the study's cells are read from the study's MLflow run, and this process was "
                "given none: the comparison runs through `attn-study`"
            )
        client = mlflow.MlflowClient()
        run = client.get_run(study_run)
        children = client.search_runs(
            [run.info.experiment_id],
            f"tags.mlflow.parentRunId = '{run.info.run_id}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
            max_results=50000,
        )
        run_ids = {
            child.data.tags["namespace"]: child.info.run_id
            for child in children  # oldest first: the newest of a namespace wins
            if child.data.tags.get("namespace", "").startswith("study.")
        }
        for tag, run_id in run.data.tags.items():
            if tag.startswith(REUSED_CELL_TAG_PREFIX):
                run_ids.setdefault(tag.removeprefix(REUSED_CELL_TAG_PREFIX), run_id)
        cells = {}
        for namespace, run_id in sorted(run_ids.items()):
            try:
                text = mlflow.artifacts.load_text(f"runs:/{run_id}/{SUMMARY_ARTIFACT}")
            except Exception as error:  # noqa: BLE001 (MLflow raises several kinds)
                raise DatasetError(
                    f"cell {namespace} (run {run_id}) has no readable {SUMMARY_ARTIFACT} "
                    f"on the tracking server: {error}"
                ) from error
            cells[namespace] = json.loads(text)
        return cells

    def save(self, data: None) -> None:
        raise DatasetError("the study's cells are written by their own runs, not saved here")

    def _exists(self) -> bool:
        return True  # what is there is known only when read (``load`` says what is missing)

    def _describe(self) -> dict[str, Any]:
        return {"source": "the study run's cells"}
