"""data_prep: raw IDX files -> train / validation / test tensors."""

from kedro.pipeline import Node, Pipeline

from .nodes import prepare_test_set, split_training_file


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                split_training_file,
                inputs=[
                    "raw_train_images",
                    "raw_train_labels",
                    "params:data_prep",
                    "params:dataset",
                ],
                outputs=["train_set", "val_set"],
                name="split_training_file",
            ),
            Node(
                prepare_test_set,
                inputs=["raw_test_images", "raw_test_labels", "params:data_prep", "params:dataset"],
                outputs="test_set",
                name="prepare_test_set",
            ),
        ]
    )
