"""feature_extractor: one classifier per data set, trained only when none is stored."""

from kedro.pipeline import Node, Pipeline

from .nodes import ensure_feature_extractor


def create_pipeline(**kwargs) -> Pipeline:
    # `stored_feature_extractor` and `feature_extractor` are the same file: the first
    # loads it (None when absent), the second saves what the node returns;
    # `reference_feature_extractor` is the one shipped inside the package.
    return Pipeline(
        [
            Node(
                ensure_feature_extractor,
                inputs=[
                    "stored_feature_extractor",
                    "reference_feature_extractor",
                    "train_set",
                    "test_set",
                    "params:feature_extractor",
                    "params:dataset",
                ],
                outputs=["feature_extractor", "feature_extractor_info"],
                name="ensure_feature_extractor",
            )
        ]
    )
