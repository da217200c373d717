"""generate: image grids from every variant (namespaced)."""

from collections.abc import Sequence

from kedro.pipeline import Node, Pipeline

from .nodes import render_images


def variant_template() -> Pipeline:
    return Pipeline(
        [
            Node(
                render_images,
                inputs=["checkpoint", "test_set", "params:generate"],
                outputs=["samples", "reconstructions", "interpolations"],
                name="render_images",
            )
        ]
    )


def create_pipeline(variants: Sequence[str] = ("none", "latent"), **kwargs) -> Pipeline:
    return sum(
        (
            Pipeline(
                variant_template(),
                namespace=variant,
                inputs={"test_set"},
                parameters={"params:generate"},
            )
            for variant in variants
        ),
        start=Pipeline([]),
    )
