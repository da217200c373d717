"""evaluate pipeline."""

from .pipeline import SHARED_INPUTS, create_pipeline, shared_pipeline, variant_template

__all__ = ["SHARED_INPUTS", "create_pipeline", "shared_pipeline", "variant_template"]
