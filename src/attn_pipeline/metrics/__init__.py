"""Metrics computed on held-out images."""

from .elbo import ReconstructionMetrics, evaluate_reconstruction
from .feature_distances import (
    class_statistics,
    frechet_distance,
    kernel_distance,
    kth_neighbour_radii,
    precision_recall,
)
from .generation import (
    ClassifierView,
    RealImages,
    classifier_view,
    generation_metrics,
    prior_samples,
    real_images,
    reconstructions,
)
from .likelihood import importance_weighted_nll
from .steering import move_metrics, steerable, steering_metrics

__all__ = [
    "ClassifierView",
    "RealImages",
    "ReconstructionMetrics",
    "class_statistics",
    "classifier_view",
    "evaluate_reconstruction",
    "frechet_distance",
    "generation_metrics",
    "importance_weighted_nll",
    "kernel_distance",
    "kth_neighbour_radii",
    "precision_recall",
    "prior_samples",
    "real_images",
    "reconstructions",
    "move_metrics",
    "steerable",
    "steering_metrics",
]
