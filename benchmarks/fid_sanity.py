"""FID-proxy sanity figures and the cost of a full evaluation, on real MNIST.

Uses the project's stored feature extractor (``data/06_models/feature_extractor/<data
set>.pt``), training and storing it first if there is none, exactly as the pipeline does.
Prints the Fréchet distance of: two random disjoint halves of the test set (the floor),
its sequential halves, 10,000 training images against the test set, uniform noise against
the test set; and, when ``kedro run`` has stored a trained ``none`` model, that model's
samples and reconstructions, with the wall-clock time of its full ``evaluate`` node.

    .venv/bin/python -m benchmarks.fid_sanity [--dataset mnist] [--variant none]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from attn_pipeline.data.saved_state import ResultCache
from attn_pipeline.data.torch_files import PackagedTorchDataset, TorchDataset
from attn_pipeline.metrics import classifier_view, frechet_distance
from attn_pipeline.models.classifier import load_feature_extractor
from attn_pipeline.pipelines.evaluate.nodes import evaluate_model, measure_real_images
from attn_pipeline.pipelines.feature_extractor.nodes import ensure_feature_extractor
from attn_pipeline.spec.config import EvaluateConfig, FeatureExtractorConfig
from benchmarks._data import load_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--variant", default="none", help="a variant stored by `kedro run`")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train, _, test = load_splits(args.dataset)
    store = TorchDataset(
        filepath=f"data/06_models/feature_extractor/{args.dataset}.pt", missing_ok=True
    )
    reference = PackagedTorchDataset(
        package="attn_pipeline",
        resource=f"reference/feature_extractor/{args.dataset}.pt",
        missing_ok=True,
    ).load()
    started = time.perf_counter()
    stored = store.load()
    # the pipeline's own choice: the stored extractor, else the reference, else trained
    extractor_checkpoint, info = ensure_feature_extractor(
        stored, reference, train, test, FeatureExtractorConfig(), args.dataset
    )
    if stored is not None:
        how = "stored"
    elif extractor_checkpoint is reference:
        how = "the reference shipped with the package"
    else:
        store.save(extractor_checkpoint)
        how = f"trained in {time.perf_counter() - started:.0f} s"
    print(f"feature extractor {info['hash']}: test accuracy {info['test_accuracy']:.4f} ({how})")
    extractor = load_feature_extractor(extractor_checkpoint)
    test_features = classifier_view(extractor, test["images"]).features
    n = len(test_features)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(n, *test["images"].shape[1:], generator=torch.Generator().manual_seed(0))
    rows = {
        "random disjoint halves of the test set (floor)": frechet_distance(
            test_features[order[: n // 2]], test_features[order[n // 2 :]]
        ),
        "sequential halves of the test set": frechet_distance(
            test_features[: n // 2], test_features[n // 2 :]
        ),
        "10,000 training images vs test": frechet_distance(
            classifier_view(extractor, train["images"][:n]).features, test_features
        ),
        "uniform noise vs test": frechet_distance(
            classifier_view(extractor, noise).features, test_features
        ),
    }
    checkpoint_path = Path(f"data/06_models/{args.dataset}/{args.variant}/model.pt")
    if checkpoint_path.is_file():
        checkpoint = TorchDataset(filepath=str(checkpoint_path)).load()
        config = EvaluateConfig()
        started = time.perf_counter()  # the shared measure of the test images included
        real = measure_real_images(test, extractor_checkpoint, config)
        with tempfile.TemporaryDirectory() as scratch:  # timed: never a stored result
            metrics, description = evaluate_model(
                checkpoint, test, extractor_checkpoint, real, config, ResultCache(Path(scratch))
            )
        seconds = time.perf_counter() - started
        rows[f"'{args.variant}' samples vs test"] = metrics["test/fid_proxy"]
        rows[f"'{args.variant}' reconstructions vs test"] = metrics["test/fid_proxy_recon"]
    else:
        metrics, seconds = None, None
        print(f"({checkpoint_path} not found: run `kedro run` for the model rows)")
    for name, value in rows.items():
        print(f"FID-proxy  {name:<48} {value:10.2f}")
    if metrics is not None:
        print(
            f"full evaluate of '{args.variant}' ({description['fid_n_samples']} samples, "
            f"K = {description['nll_iw_k']} on {description['nll_iw_n_images']} images): "
            f"{seconds:.0f} s"
        )
        for name, value in metrics.items():
            print(f"  {name:<28} {value:.4f}")


if __name__ == "__main__":
    main()
