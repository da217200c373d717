"""generate pipeline."""

from .pipeline import create_pipeline, entry_template

__all__ = ["create_pipeline", "entry_template"]
