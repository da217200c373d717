"""Train one model variant: build it from its config, fit it, hand back checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from attn_pipeline import models, training
from attn_pipeline.data import binarization
from attn_pipeline.data.binarization import evaluation_images, is_binarized
from attn_pipeline.data.fingerprints import result_description
from attn_pipeline.data.saved_state import CheckpointFolders
from attn_pipeline.models import ImageSampler, build_vae, count_parameters, make_checkpoint
from attn_pipeline.models.checkpoint import DATASET
from attn_pipeline.spec.config import ModelConfig, TrainConfig
from attn_pipeline.tracking.runs import log_epoch_metrics
from attn_pipeline.training.loop import TrainingState, fit

logger = logging.getLogger(__name__)


def training_description(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_set: dict[str, torch.Tensor],
    val_set: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Everything the trained weights and the logged history depend on, the code that
    trains included: the key of the folder its epochs are saved in (``train.resume``
    itself decides nothing of it)."""
    return result_description(
        (models, training, binarization),
        model=model_config,
        train=train_config.model_dump(mode="json", exclude={"resume"}),
        train_images=train_set["images"],
        val_images=val_set["images"],
        binarized=is_binarized(train_set),
    )


def train_model(
    train_set: dict[str, torch.Tensor],
    val_set: dict[str, torch.Tensor],
    model_config: ModelConfig,
    train_config: TrainConfig,
    checkpoint_folders: CheckpointFolders,
) -> tuple[dict[str, Any], pd.DataFrame, ImageSampler, dict]:
    """Fit the variant ``model_config`` describes with the shared ``train_config`` budget.

    Each epoch is saved as it ends, in the folder of this exact configuration (model,
    budget, seed, data); a rerun continues after the last saved epoch (``train.resume``,
    default true) and so ends with the same weights as a run that was never stopped.

    Returns:
        The final checkpoint; the per-epoch metrics table; the trained generator as a
        ``z -> images`` module; and the resolved configuration of the run (MLflow's params).
    """
    train_config.check_fits(len(train_set["images"]))
    description = training_description(model_config, train_config, train_set, val_set)
    checkpoints = checkpoint_folders.for_configuration(description)
    if not train_config.resume:
        checkpoints.clear()
    saved = checkpoints.latest()
    resume_from = TrainingState.from_dict(saved) if saved is not None else None
    name = f"variant '{model_config.variant}' (seed {train_config.seed})"
    if resume_from is not None:
        logger.info(
            "%s: resuming after epoch %d of %d from %s (train.resume=false starts over)",
            name,
            resume_from.epoch,
            train_config.epochs,
            checkpoints.folder,
        )
        for row in resume_from.history:  # the run in MLflow gets the whole curve
            log_epoch_metrics(int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"})

    torch.manual_seed(train_config.seed)  # the initial weights depend on the seed alone
    image_shape = tuple(train_set["images"].shape[1:])  # the data set's (C, H, W)
    model = build_vae(model_config, image_shape)
    model.init_output_bias(train_set["images"].mean(dim=0))
    n_parameters = count_parameters(model)
    meta = {
        "n_parameters": n_parameters,
        "train_config": train_config.model_dump(mode="json"),
        # what it was trained on: loading it for another data set is refused
        "data": {
            DATASET: train_set.get(DATASET),
            "train_images": description["train_images"],
            "val_images": description["val_images"],
        },
    }

    def save_epoch(state: TrainingState) -> None:
        epoch_checkpoint = make_checkpoint(
            model_config, image_shape, state.model, epoch=state.epoch, **meta
        )
        checkpoints.save(state.epoch, epoch_checkpoint, state.to_dict())

    result = fit(
        model,
        train_set["images"],
        evaluation_images(val_set),
        train_config,
        on_epoch_end=log_epoch_metrics,
        on_state=save_epoch,
        resume_from=resume_from,
        binarize=is_binarized(train_set),
        name=name,
    )
    final = make_checkpoint(
        model_config, image_shape, model.state_dict(), epoch=train_config.epochs, **meta
    )
    run_params = {
        "model": model_config.model_dump(mode="json"),
        "train": train_config.model_dump(mode="json"),
        "n_parameters": n_parameters,
        "n_train_images": len(train_set["images"]),
        "n_val_images": len(val_set["images"]),
        "binarized": is_binarized(train_set),
        "checkpoint_folder": checkpoints.folder.name,
        # what the forward passes ran in (train.precision: auto decides by the device)
        "precision_used": result.precision.name,
        "precision_reason": result.precision.reason,
        "resumed_after_epoch": resume_from.epoch if resume_from is not None else 0,
    }
    sampler = ImageSampler(model.generator, latent_dim=model.latent_dim).eval()
    return final, pd.DataFrame(result.history), sampler, run_params


def train_model_of_cell(entry: str, seed: int) -> Callable[..., Any]:
    """``train_model`` with ``train.seed`` replaced by ``seed`` (one study repeat); its
    run parameters name the study entry it trains."""

    def train_model_with_seed(
        train_set: dict[str, torch.Tensor],
        val_set: dict[str, torch.Tensor],
        model_config: ModelConfig,
        train_config: TrainConfig,
        checkpoint_folders: CheckpointFolders,
    ) -> tuple:
        *outputs, run_params = train_model(
            train_set,
            val_set,
            model_config,
            train_config.model_copy(update={"seed": seed}),
            checkpoint_folders,
        )
        return (*outputs, {"entry": entry, **run_params})

    return train_model_with_seed
