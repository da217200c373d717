"""Checkpoints: a state dict plus the config that rebuilds the module around it.

A checkpoint holds only tensors and plain values, so it loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

import torch

from attn_pipeline.config import ModelConfig

from .vae import VAE, build_vae


def make_checkpoint(
    model_config: ModelConfig, state_dict: dict[str, torch.Tensor], **meta: Any
) -> dict[str, Any]:
    """Bundle ``state_dict`` with the model config (as plain values) and extra metadata."""
    return {"model_config": model_config.model_dump(mode="json"), "state_dict": state_dict, **meta}


def load_checkpoint(checkpoint: dict[str, Any]) -> tuple[VAE, ModelConfig]:
    """Rebuild the model a checkpoint describes, in eval mode on the CPU."""
    config = ModelConfig.model_validate(checkpoint["model_config"])
    model = build_vae(config)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), config
