"""Test loss of one variant trained with the pipeline's own nodes on full MNIST.

The reference: pytorch/examples' VAE (MLP 784-400-20, 10 epochs, batch 128, Adam 1e-3,
grey-level MNIST) reaches a test loss (BCE + KL per image) of 105.6 on this machine.

    .venv/bin/python -m benchmarks.quality --backbone mlp --variant none
    .venv/bin/python -m benchmarks.quality --backbone conv --variant latent --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from attn_pipeline.data.saved_state import CheckpointFolders
from attn_pipeline.metrics import evaluate_reconstruction
from attn_pipeline.models import load_checkpoint
from attn_pipeline.pipelines.train.nodes import train_model
from attn_pipeline.spec.config import DataPrepConfig, ModelConfig, TrainConfig
from benchmarks._data import load_splits

REFERENCE_TEST_LOSS = 105.6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mlp", choices=["conv", "mlp"])
    parser.add_argument("--variant", default="none")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="validation images held out (0 trains on all 60,000, as the reference does)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    train, val, test = load_splits(config=DataPrepConfig(val_size=args.val_size))
    model_config = ModelConfig(
        variant=args.variant, backbone=args.backbone, latent_dim=args.latent_dim
    )
    losses = []
    for seed in args.seeds:
        config = TrainConfig(epochs=args.epochs, batch_size=128, learning_rate=1e-3, seed=seed)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:  # a fresh training, not a resumed one
            checkpoint, *_ = train_model(
                train, val, model_config, config, CheckpointFolders(Path(scratch))
            )
        seconds = time.perf_counter() - started
        # the evaluate node's own ELBO code, without its sample-quality metrics
        metrics = evaluate_reconstruction(load_checkpoint(checkpoint)[0], test["images"])
        losses.append(metrics.neg_elbo)
        print(
            f"{args.variant}/{args.backbone} seed {seed}, {len(train['images'])} training "
            f"images: test loss (BCE + KL per image) "
            f"{metrics.neg_elbo:.2f}, BCE {metrics.recon_bce:.2f}, "
            f"KL {metrics.kl:.2f}; trained in {seconds:.0f} s"
        )
    spread = f" +- {statistics.stdev(losses):.2f}" if len(losses) > 1 else ""
    print(
        f"mean test loss {statistics.mean(losses):.2f}{spread} over {len(losses)} seed(s); "
        f"reference {REFERENCE_TEST_LOSS}"
    )


if __name__ == "__main__":
    main()
