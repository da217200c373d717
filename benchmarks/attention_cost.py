"""Epoch time and parameter count of every model variant, in one run.

Each variant, as configured in ``conf/base/parameters_train.yml`` (``<name>.model``),
trains for one full epoch on the MNIST training split (55,000 images, batch 128), the
variants taking turns, ``--repeats`` times each; the fastest epoch of each is reported with
its ratio to the baseline ``none``. For reference it also times self-attention at 14x14,
through the fused ``scaled_dot_product_attention`` and written naively
(``softmax(q @ k^T) @ v``).

    .venv/bin/python -m benchmarks.attention_cost [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

from attn_pipeline.models import SelfAttention2d, build_vae, count_parameters
from attn_pipeline.models.attention import AttentionMaps, naive_self_attention
from attn_pipeline.spec.config import ModelConfig, TrainConfig
from attn_pipeline.spec.parameters import load_parameters
from attn_pipeline.training.loop import fit
from benchmarks._data import load_splits

#: (C, H, W) of MNIST's images
MNIST_SHAPE = (1, 28, 28)


class NaiveSelfAttention2d(SelfAttention2d):
    """SelfAttention2d with the attention written out instead of the fused kernel."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, AttentionMaps]:
        b, c, h, w = x.shape
        q = self.to_q(x).flatten(2).transpose(1, 2)
        k = self.to_k(x).flatten(2).transpose(1, 2)
        v = self.to_v(x).flatten(2).transpose(1, 2)
        out = naive_self_attention(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.gamma * out, {}


def build(name: str, config: ModelConfig) -> nn.Module:
    model = build_vae(config, MNIST_SHAPE)
    if name.startswith("naive"):
        width = model.generator.decoder.block.to_v.in_channels
        model.generator.decoder.block = NaiveSelfAttention2d(width)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--entries", nargs="+", default=None, help="entries (default: every <name>.model block)"
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive reference")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    train, _, _ = load_splits()
    params = load_parameters(Path("conf"))
    entries = args.entries or [
        name for name, block in params.items() if isinstance(block, dict) and "model" in block
    ]
    configs = {name: ModelConfig.model_validate(params[name]["model"]) for name in entries}
    if not args.no_naive:
        configs["self @14x14"] = ModelConfig(variant="self", attention_resolution=14)
        configs["naive self @14x14"] = ModelConfig(variant="self", attention_resolution=14)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, config in configs.items():
            torch.manual_seed(0)
            model = build(name, config)
            result = fit(
                model,
                train["images"],
                None,
                TrainConfig(epochs=1, device="cpu"),
                show_progress=False,
            )
            times[name].append(result.history[0]["train/epoch_seconds"])
    base = min(times["none"]) if "none" in times else None
    print(
        f"one epoch, {len(train['images'])} images, batch 128, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(f"{'variant':<20} {'resolution':>10} {'parameters':>11} {'s/epoch':>8} {'vs none':>8}")
    for name, config in configs.items():
        best = min(times[name])
        ratio = f"{best / base:.2f}" if base else "-"
        n = count_parameters(build(name, config))
        print(f"{name:<20} {config.attention_resolution:>10} {n:>11,} {best:>8.1f} {ratio:>8}")


if __name__ == "__main__":
    main()
