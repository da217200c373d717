"""The pipelines' shape as kedro viz and `kedro run --tags` see it: every copy of a node is
named after its entry (or study cell), and each stage carries a tag that selects it."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from attn_pipeline.pipelines import evaluate, generate, study, train

STAGES = ("train", "evaluate", "generate")


def _default(variants: list[str], steerable: set[str]) -> Pipeline:
    return (
        train.create_pipeline(variants)
        + evaluate.create_pipeline(variants)
        + generate.create_pipeline(variants, steerable=steerable)
    )


def test_node_names_carry_their_entry() -> None:
    """kedro viz shows a node's short name: two entries' copies must not read alike."""
    pipeline = _default(["none", "spatial_gate"], steerable={"spatial_gate"})
    names = {node.name for node in pipeline.nodes if node.namespace}
    assert names == {
        "none.train_none",
        "none.evaluate_none",
        "none.name_the_data_none",
        "none.render_images_none",
        "none.plot_attention_maps_none",
        "spatial_gate.train_spatial_gate",
        "spatial_gate.evaluate_spatial_gate",
        "spatial_gate.name_the_data_spatial_gate",
        "spatial_gate.render_images_spatial_gate",
        "spatial_gate.plot_attention_maps_spatial_gate",
        "spatial_gate.render_steering_spatial_gate",
    }
    short_names = [node.short_name for node in pipeline.nodes if node.namespace]
    assert len(set(short_names)) == len(short_names)


def test_study_cells_nodes_carry_the_cell() -> None:
    pipeline = study.create_pipeline(["none", "latent"], [0, 1])
    cell = pipeline.only_nodes_with_namespaces(["study.latent_seed1"])
    assert sorted(node.short_name for node in cell.nodes) == [
        "evaluate_latent_seed1",
        "name_the_data_latent_seed1",
        "plot_attention_maps_latent_seed1",
        "render_images_latent_seed1",
        "summarise_latent_seed1",
        "train_latent_seed1",
    ]


def test_stage_tags_select_their_nodes_of_every_entry() -> None:
    """`kedro run --tags train` (and kedro viz's tag filter) picks one stage of every entry."""
    pipeline = _default(["none", "latent"], steerable=set())
    selected = {
        stage: sorted(node.name for node in pipeline.only_nodes_with_tags(stage).nodes)
        for stage in STAGES
    }
    assert selected == {
        "train": ["latent.train_latent", "none.train_none"],
        "evaluate": [
            "latent.evaluate_latent",
            "latent.name_the_data_latent",
            "none.evaluate_none",
            "none.name_the_data_none",
        ],
        "generate": [
            "latent.plot_attention_maps_latent",
            "latent.render_images_latent",
            "none.plot_attention_maps_none",
            "none.render_images_none",
        ],
    }
