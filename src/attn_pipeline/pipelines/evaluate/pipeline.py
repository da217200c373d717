"""evaluate: test metrics per variant (namespaced), then one table over all variants."""

from collections.abc import Sequence

from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_model, tabulate_test_metrics


def variant_template() -> Pipeline:
    return Pipeline(
        [
            Node(
                evaluate_model,
                inputs=["checkpoint", "test_set", "params:evaluate"],
                outputs="test_metrics",
                name="evaluate_model",
            )
        ]
    )


def create_pipeline(variants: Sequence[str] = ("none", "latent"), **kwargs) -> Pipeline:
    per_variant = [
        Pipeline(
            variant_template(),
            namespace=variant,
            inputs={"test_set"},
            parameters={"params:evaluate"},
        )
        for variant in variants
    ]
    table = Node(
        tabulate_test_metrics,
        inputs={variant: f"{variant}.test_metrics" for variant in variants},
        outputs="test_metrics_table",
        name="tabulate_test_metrics",
    )
    return sum(per_variant, start=Pipeline([])) + Pipeline([table])
