"""What a study cell is: its name, its namespace and the key that identifies its result.

A cell is one (entry, seed) pair of ``study``: the entry's model trained with the shared
budget at that seed, evaluated and rendered. Its MLflow run carries :data:`CELL_KEY_TAG`,
a hash of everything the cell's figures depend on, so that a study can find a cell that
finished before (in an earlier study, on any machine) and not run it again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attn_pipeline
from attn_pipeline.data.fingerprints import result_description, result_key
from attn_pipeline.spec.config import TYPED_BLOCKS, ModelConfig

#: The MLflow tag holding a study cell's key (:func:`cell_key`).
CELL_KEY_TAG = "attn_pipeline.cell_key"
#: The typed blocks every cell's figures depend on (beside the data set and its entry's model).
SHARED_BLOCKS = ("data_prep", "feature_extractor", "train", "evaluate", "generate")

_NAMESPACE = re.compile(r"^study\.(?P<entry>.+)_seed(?P<seed>\d+)$")


def run_name(entry: str, seed: int) -> str:
    return f"{entry}_seed{seed}"


def cell_namespace(entry: str, seed: int) -> str:
    """The namespace of one study cell (``kedro run --namespaces`` takes it)."""
    return f"study.{run_name(entry, seed)}"


def study_cells(entries: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int, str]]:
    """(entry, seed, namespace) of every cell, seed by seed (every entry at the first seed,
    then every entry at the next): a study stopped part way leaves whole seeds, which pair
    with each other in the comparison."""
    return [(entry, seed, cell_namespace(entry, seed)) for seed in seeds for entry in entries]


def parse_cell_namespace(namespace: str) -> tuple[str, int] | None:
    """(entry, seed) of a cell's namespace; None for any other namespace."""
    match = _NAMESPACE.match(namespace)
    return None if match is None else (match["entry"], int(match["seed"]))


def cell_key(params: dict[str, Any], entry: str, seed: int) -> str:
    """A hash of what the cell's figures depend on: the project's code, the data set and
    its preparation, the extractor's settings, the entry's model, the budget at this seed
    (``train.resume`` aside: it changes how, not what), the evaluation and the rendering.

    ``params`` are the run's parameters as Kedro loads them. Two machines with the same
    code and configuration give a cell the same key; the content hashes of the data and
    extractor a cell actually used are recorded on its run and checked by the comparison.
    """
    typed = {b: TYPED_BLOCKS[b].model_validate(params.get(b) or {}) for b in SHARED_BLOCKS}
    train = typed.pop("train").model_dump(mode="json", exclude={"resume"})
    return result_key(
        result_description(
            (attn_pipeline,),
            entry=entry,
            dataset=params.get("dataset"),
            **typed,
            train={**train, "seed": seed},
            model=ModelConfig.model_validate((params.get(entry) or {}).get("model") or {}),
        )
    )
