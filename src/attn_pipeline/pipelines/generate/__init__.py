"""generate pipeline."""

from .pipeline import create_pipeline, variant_template

__all__ = ["create_pipeline", "variant_template"]
