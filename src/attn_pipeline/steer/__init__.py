"""``attn-steer``: a local web page to steer a trained generator by editing its map."""

from .app import SteerableModel, create_app, load_checkpoint_model, load_registered_model

__all__ = ["SteerableModel", "create_app", "load_checkpoint_model", "load_registered_model"]
