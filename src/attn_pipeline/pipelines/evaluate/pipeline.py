"""evaluate: test metrics per entry (namespaced), then one table over all entries.

It starts with the shared steps: the feature_extractor pipeline's node, which trains the
FID-proxy's classifier only when none is stored for the data set, and the extractor's
measure of the test images, which every entry is compared with.
"""

import warnings
from collections.abc import Collection, Sequence

from kedro.pipeline import Node, Pipeline

from attn_pipeline.pipelines import EVALUATE_TAG, feature_extractor

from .nodes import (
    data_inputs,
    evaluate_model,
    measure_real_images,
    tabulate_test_metrics,
)

#: What the entries' evaluations share, made once per run (a study's shared step).
SHARED_INPUTS = {"test_set", "feature_extractor", "test_real_images"}
#: The classifier of the scenes' digits (the raw data set's reference extractor): the
#: scene benchmark's, for ``objects`` entries.
OBJECT_CLASSIFIER = "object_classifier"


def shared_inputs(scenes: bool) -> set[str]:
    """The shared inputs of an entry's evaluation."""
    return SHARED_INPUTS | {OBJECT_CLASSIFIER} if scenes else SHARED_INPUTS


def shared_pipeline() -> Pipeline:
    """The extractor, then its features and k-NN radii of the test images."""
    return feature_extractor.create_pipeline() + Pipeline(
        [
            Node(
                measure_real_images,
                inputs=["test_set", "feature_extractor", "params:evaluate"],
                outputs="test_real_images",
                name="measure_real_images",
            )
        ]
    )


def entry_template(label: str, scenes: bool = False) -> Pipeline:
    """Evaluation of one entry, its node named after ``label`` (see train's template);
    with ``scenes`` (an ``objects`` model), the scene benchmark too, which reads the digits'
    classifier."""
    inputs = [
        "checkpoint",
        "test_set",
        "feature_extractor",
        "test_real_images",
        "params:evaluate",
        "evaluation_cache",
    ]
    return Pipeline(
        [
            Node(
                evaluate_model,
                inputs=[*inputs, OBJECT_CLASSIFIER] if scenes else inputs,
                outputs=["test_metrics", "evaluation_info"],
                name=f"evaluate_{label}",
                tags=[EVALUATE_TAG],
            ),
            Node(
                data_inputs,
                inputs=["checkpoint", "test_set", "params:dataset"],
                outputs="data_inputs",
                name=f"name_the_data_{label}",
                tags=[EVALUATE_TAG],
            ),
        ]
    )


def create_pipeline(
    entries: Sequence[str] = ("none", "latent"), scenes: Collection[str] = (), **kwargs
) -> Pipeline:
    """One namespaced copy per entry; ``scenes`` names the ``objects`` entries."""
    per_entry = [
        Pipeline(
            entry_template(entry, scenes=entry in scenes),
            namespace=entry,
            inputs=shared_inputs(entry in scenes),
            parameters={"params:evaluate", "params:dataset"},
        )
        for entry in entries
    ]
    with warnings.catch_warnings():
        # Kedro warns of '.' in dataset names, the very names its namespaces give: this node
        # reads each entry's namespaced output from outside the namespace
        warnings.filterwarnings("ignore", "One or more dataset names contain '.'")
        table = Node(
            tabulate_test_metrics,
            inputs={entry: f"{entry}.test_metrics" for entry in entries},
            outputs="test_metrics_table",
            name="tabulate_test_metrics",
        )
    return shared_pipeline() + sum(per_entry, start=Pipeline([])) + Pipeline([table])
