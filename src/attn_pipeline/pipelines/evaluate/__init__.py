"""evaluate pipeline."""

from .pipeline import (
    SHARED_INPUTS,
    create_pipeline,
    entry_template,
    shared_inputs,
    shared_pipeline,
)

__all__ = [
    "SHARED_INPUTS",
    "create_pipeline",
    "shared_inputs",
    "shared_pipeline",
    "entry_template",
]
