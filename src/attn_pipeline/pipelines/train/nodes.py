"""Train one model variant: build it from its config, fit it, hand back checkpoints."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from attn_pipeline.binarization import evaluation_images, is_binarized
from attn_pipeline.config import ModelConfig, TrainConfig
from attn_pipeline.models import ImageSampler, build_vae, count_parameters, make_checkpoint
from attn_pipeline.tracking import log_epoch_metrics
from attn_pipeline.training import fit


def train_model(
    train_set: dict[str, torch.Tensor],
    val_set: dict[str, torch.Tensor],
    model_config: ModelConfig,
    train_config: TrainConfig,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], pd.DataFrame, ImageSampler, dict]:
    """Fit the variant ``model_config`` describes with the shared ``train_config`` budget.

    Returns:
        The final checkpoint; one checkpoint per epoch (``epoch_001`` ...); the per-epoch
        metrics table; the trained generator as a ``z -> images`` module; and the resolved
        configuration of the run (for MLflow's params).
    """
    train_config.check_fits(len(train_set["images"]))
    torch.manual_seed(train_config.seed)  # the initial weights depend on the seed alone
    model = build_vae(model_config)
    model.init_output_bias(train_set["images"].mean(dim=0))
    result = fit(
        model,
        train_set["images"],
        evaluation_images(val_set),
        train_config,
        on_epoch_end=log_epoch_metrics,
        binarize=is_binarized(train_set),
        name=f"variant '{model_config.variant}' (seed {train_config.seed})",
    )
    n_parameters = count_parameters(model)
    meta = {"n_parameters": n_parameters, "train_config": train_config.model_dump(mode="json")}
    epochs = {
        f"epoch_{row['epoch']:03d}": make_checkpoint(
            model_config, state, epoch=row["epoch"], **meta
        )
        for row, state in zip(result.history, result.epoch_states, strict=True)
    }
    final = make_checkpoint(model_config, model.state_dict(), epoch=train_config.epochs, **meta)
    run_params = {
        "model": model_config.model_dump(mode="json"),
        "train": train_config.model_dump(mode="json"),
        "n_parameters": n_parameters,
        "n_train_images": len(train_set["images"]),
        "n_val_images": len(val_set["images"]),
        "binarized": is_binarized(train_set),
    }
    sampler = ImageSampler(model.generator, latent_dim=model_config.latent_dim).eval()
    return final, epochs, pd.DataFrame(result.history), sampler, run_params
