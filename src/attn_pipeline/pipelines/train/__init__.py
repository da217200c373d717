"""train pipeline."""

from .nodes import train_model_of_cell
from .pipeline import create_pipeline, entry_template

__all__ = ["create_pipeline", "train_model_of_cell", "entry_template"]
