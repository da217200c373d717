"""Metrics computed on held-out images."""

from .elbo import ReconstructionMetrics, evaluate_reconstruction

__all__ = ["ReconstructionMetrics", "evaluate_reconstruction"]
