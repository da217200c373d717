"""The study pipeline: each (entry, seed) cell, the shared step, and the comparison report."""

from .pipeline import create_pipeline, create_report_pipeline

__all__ = ["create_pipeline", "create_report_pipeline"]
