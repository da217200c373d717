"""The project's pipelines. Every node of a stage carries the stage's tag, so that the
Tags filter of kedro viz and ``kedro run --tags evaluate`` pick one stage of every entry."""

TRAIN_TAG = "train"
EVALUATE_TAG = "evaluate"
GENERATE_TAG = "generate"
#: The study's cells and the shared step they need (``attn-study`` runs one cell a process).
STUDY_PIPELINE = "study"
