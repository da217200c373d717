"""The study: for every entry and seed in ``study``, a namespaced copy of train -> evaluate
-> generate on the same data split (a cell, summarised in its ``summary``); then the
comparison of the cells' summaries, read from the tracking server."""

from collections.abc import Collection, Sequence

from kedro.pipeline import Node, Pipeline

from attn_pipeline.pipelines import data_prep, evaluate, generate, train
from attn_pipeline.spec.cells import cell_namespace, run_name

from .nodes import compare_study_cells, summarise_cell

#: What the comparison writes.
COMPARISON_OUTPUTS = [
    "study_table",
    "study_differences",
    "study_table_markdown",
    "study_chart",
    "study_runs",
]


def _one_run(entry: str, seed: int, steerable: bool, scenes: bool) -> Pipeline:
    cell = run_name(entry, seed)
    template = (
        train.entry_template(cell, train.train_model_of_cell(entry, seed))
        + evaluate.entry_template(cell, scenes=scenes)
        + generate.entry_template(cell, steerable=steerable, scenes=scenes)
        + Pipeline(
            [
                Node(
                    summarise_cell(entry),
                    inputs=["test_metrics", "evaluation_info", "run_params", "training_history"],
                    outputs="summary",
                    name=f"summarise_{cell}",
                )
            ]
        )
    )
    return Pipeline(
        template,
        namespace=cell_namespace(entry, seed),
        inputs={"train_set", "val_set", *evaluate.shared_inputs(scenes)},
        parameters={
            "params:model": f"params:{entry}.model",
            "params:train": "params:train",
            "params:evaluate": "params:evaluate",
            "params:dataset": "params:dataset",
            "params:generate": "params:generate",
        },
    )


def create_pipeline(
    entries: Sequence[str],
    seeds: Sequence[int],
    steerable: Collection[str] = (),
    scenes: Collection[str] = (),
    **kwargs,
) -> Pipeline:
    runs = [
        _one_run(entry, seed, entry in steerable, entry in scenes)
        for entry in entries
        for seed in seeds
    ]
    shared = data_prep.create_pipeline() + evaluate.shared_pipeline()
    return shared + sum(runs, start=Pipeline([]))


def create_report_pipeline() -> Pipeline:
    """The comparison of the study's cells, which ran as separate processes, perhaps on
    other machines (``attn-study``): their rows come from the tracking server alone."""
    return Pipeline(
        [
            Node(
                compare_study_cells,
                inputs=["params:study", "study_cells"],
                outputs=COMPARISON_OUTPUTS,
                name="compare_study_cells",
            )
        ]
    )
