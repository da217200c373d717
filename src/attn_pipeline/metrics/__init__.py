"""Metrics computed on held-out images."""

from .elbo import ReconstructionMetrics, evaluate_reconstruction
from .feature_distances import (
    class_statistics,
    frechet_distance,
    kernel_distance,
    precision_recall,
)
from .generation import classifier_view, generation_metrics, prior_samples, reconstructions
from .likelihood import importance_weighted_nll
from .steering import steerable, steering_metrics

__all__ = [
    "ReconstructionMetrics",
    "class_statistics",
    "classifier_view",
    "evaluate_reconstruction",
    "frechet_distance",
    "generation_metrics",
    "importance_weighted_nll",
    "kernel_distance",
    "precision_recall",
    "prior_samples",
    "reconstructions",
    "steerable",
    "steering_metrics",
]
