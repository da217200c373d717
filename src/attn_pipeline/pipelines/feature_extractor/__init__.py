"""feature_extractor pipeline: the FID-proxy's classifier, trained once per data set."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
