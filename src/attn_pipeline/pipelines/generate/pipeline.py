"""generate: image grids, attention maps and (where the entry has a spatial map) steering."""

from collections.abc import Collection, Sequence

from kedro.pipeline import Node, Pipeline

from attn_pipeline.pipelines import GENERATE_TAG

from .nodes import plot_attention_maps, render_images, render_steering


def entry_template(label: str, steerable: bool = False) -> Pipeline:
    """Images of one entry, its nodes named after ``label`` (see train's template)."""
    nodes = [
        Node(
            render_images,
            inputs=["checkpoint", "test_set", "params:generate"],
            outputs=["samples_grid", "reconstructions_grid", "interpolations_grid"],
            name=f"render_images_{label}",
            tags=[GENERATE_TAG],
        ),
        Node(
            plot_attention_maps,
            inputs=["checkpoint", "test_set", "params:generate"],
            outputs="attention_maps",
            name=f"plot_attention_maps_{label}",
            tags=[GENERATE_TAG],
        ),
    ]
    if steerable:
        nodes.append(
            Node(
                render_steering,
                inputs=["checkpoint", "test_set", "params:generate"],
                outputs="steering",
                name=f"render_steering_{label}",
                tags=[GENERATE_TAG],
            )
        )
    return Pipeline(nodes)


def create_pipeline(
    entries: Sequence[str] = ("none", "latent"), steerable: Collection[str] = (), **kwargs
) -> Pipeline:
    """One namespaced copy per entry; ``steerable`` names those with an editable map."""
    return sum(
        (
            Pipeline(
                entry_template(entry, steerable=entry in steerable),
                namespace=entry,
                inputs={"test_set"},
                parameters={"params:generate"},
            )
            for entry in entries
        ),
        start=Pipeline([]),
    )
