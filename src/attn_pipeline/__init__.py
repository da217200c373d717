"""attn_pipeline: baseline and attention-augmented VAEs on MNIST, as Kedro pipelines."""

__version__ = "0.1.0"
