"""generate: image grids, attention maps and (where the entry has a spatial map) steering,
(where it is ``objects``) scene edits."""

from collections.abc import Collection, Sequence

from kedro.pipeline import Node, Pipeline

from attn_pipeline.pipelines import GENERATE_TAG

from .nodes import plot_attention_maps, render_images, render_scene_edits, render_steering


def entry_template(label: str, steerable: bool = False, scenes: bool = False) -> Pipeline:
    """Images of one entry, its nodes named after ``label`` (see train's template); a
    steering figure where it has a spatial map, the scene edits where it is ``objects``."""
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
    if scenes:
        nodes.append(
            Node(
                render_scene_edits,
                inputs=["checkpoint", "test_set", "params:generate"],
                outputs="scene_edits",
                name=f"render_scene_edits_{label}",
                tags=[GENERATE_TAG],
            )
        )
    return Pipeline(nodes)


def create_pipeline(
    entries: Sequence[str] = ("none", "latent"),
    steerable: Collection[str] = (),
    scenes: Collection[str] = (),
    **kwargs,
) -> Pipeline:
    """One namespaced copy per entry; ``steerable`` names those with an editable map,
    ``scenes`` the ``objects`` entries."""
    return sum(
        (
            Pipeline(
                entry_template(entry, steerable=entry in steerable, scenes=entry in scenes),
                namespace=entry,
                inputs={"test_set"},
                parameters={"params:generate"},
            )
            for entry in entries
        ),
        start=Pipeline([]),
    )
