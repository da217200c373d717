"""Pipeline overhead: the training node run by Kedro against a bare PyTorch loop.

Both train the same model (same config, same initial weights) on the same tensors for the
same epochs and batch size. The node runs through Kedro's SequentialRunner with the
project's hooks' MLflow logging into a throw-away store, so validation each epoch, the
per-epoch checkpoints, the metric logging and the logged model are all counted. The two
alternate, ``--repeats`` times each, and the fastest of each is compared.

    .venv/bin/python -m benchmarks.train_overhead [--backbone conv] [--epochs 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import mlflow
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from attn_pipeline.data.saved_state import TrainingCheckpointsDataset
from attn_pipeline.models import build_vae
from attn_pipeline.models.losses import training_objective, vae_loss_terms
from attn_pipeline.pipelines.train.pipeline import entry_template
from attn_pipeline.spec.config import ModelConfig, TrainConfig
from attn_pipeline.tracking.model_registry import log_sampler_model
from benchmarks._data import load_splits


def bare_loop(images: torch.Tensor, model_config: ModelConfig, config: TrainConfig) -> float:
    """The plainest loop that trains the same model: seconds taken."""
    torch.manual_seed(config.seed)
    model = build_vae(model_config, tuple(images.shape[1:]))
    model.init_output_bias(images.mean(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    started = time.perf_counter()
    for _ in range(config.epochs):
        permutation = torch.randperm(len(images))
        for start in range(0, len(images), config.batch_size):
            x = images[permutation[start : start + config.batch_size]]
            loss = training_objective(vae_loss_terms(model(x), x), beta=config.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def kedro_node(train, val, model_config: ModelConfig, config: TrainConfig) -> float:
    """The training node through Kedro's runner, logging to MLflow: seconds taken."""
    with tempfile.TemporaryDirectory() as scratch:  # a fresh training, saved per epoch
        catalog = DataCatalog(
            {
                "train_set": MemoryDataset(train),
                "val_set": MemoryDataset(val),
                "params:model": MemoryDataset(model_config),
                "params:train": MemoryDataset(config),
                "training_checkpoints": TrainingCheckpointsDataset(path=scratch),
            }
        )
        started = time.perf_counter()
        with mlflow.start_run() as run:
            outputs = SequentialRunner().run(entry_template("none"), catalog)
            log_sampler_model(outputs["sampler"].load(), run.info.run_id)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="conv", choices=["conv", "mlp"])
    parser.add_argument("--variant", default="none")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    train, val, _ = load_splits()
    model_config = ModelConfig(variant=args.variant, backbone=args.backbone)
    config = TrainConfig(epochs=args.epochs, device="cpu")
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
        mlflow.set_experiment("overhead")
        bare, node = [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(train["images"], model_config, config))
            node.append(kedro_node(train, val, model_config, config))
    print(
        f"model: {args.variant}/{args.backbone}, {args.epochs} epochs, "
        f"{len(train['images'])} images, batch {config.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"bare PyTorch loop: {', '.join(f'{t:.1f}' for t in bare)} s (best {min(bare):.1f})")
    print(f"Kedro train node:  {', '.join(f'{t:.1f}' for t in node)} s (best {min(node):.1f})")
    print(f"overhead ratio (best node / best bare): {min(node) / min(bare):.3f}")


if __name__ == "__main__":
    main()
