"""train: one namespaced copy of the training node per entry."""

from collections.abc import Callable, Sequence

from kedro.pipeline import Node, Pipeline

from attn_pipeline.pipelines import TRAIN_TAG

from .nodes import train_model

#: The tag of every training node (``kedro run --tags train``; the run's budget check).


def entry_template(label: str, train_func: Callable = train_model) -> Pipeline:
    """Training for one entry; ``params:model`` is namespaced, ``params:train`` shared.

    The node is named after ``label`` (the entry, or the study cell), so that kedro viz
    tells the copies apart (``train_latent``); the tag ``train`` selects every copy.
    ``training_checkpoints`` is an input because it loads as the handle training writes
    each epoch through (and reads the epoch to resume from)."""
    return Pipeline(
        [
            Node(
                train_func,
                inputs=[
                    "train_set",
                    "val_set",
                    "params:model",
                    "params:train",
                    "training_checkpoints",
                ],
                outputs=[
                    "checkpoint",
                    "training_history",
                    "sampler",
                    "run_params",
                ],
                name=f"train_{label}",
                tags=[TRAIN_TAG],
            )
        ]
    )


def create_pipeline(entries: Sequence[str] = ("none", "latent"), **kwargs) -> Pipeline:
    return sum(
        (
            Pipeline(
                entry_template(entry),
                namespace=entry,
                inputs={"train_set", "val_set"},
                parameters={"params:train"},
            )
            for entry in entries
        ),
        start=Pipeline([]),
    )
