"""How far a feature extractor's class can be trusted after a move: real test images moved
whole (an exact shift by whole pixels) so that their ink centroid lands in each quadrant's
box, as the move benchmark's boxes place a glyph, and classified before and after.

A glyph moved whole is the same glyph, so every change of class here is the extractor's: the
figure bounds the ``move_class_kept`` any model can reach when measured with that extractor.
With ``--model`` (a ``where`` checkpoint), also the class kept of its prior samples when the
map is replaced by its own peak cell: the glyph moves by at most one pixel, so what changes
is only its resampling, and the figure is the floor of ``move_class_kept`` on those samples.

    .venv/bin/python -m benchmarks.extractor_invariance --env translated_mnist --raw mnist \\
        data/06_models/feature_extractor/translated_mnist.pt [more extractors] \\
        [--model data/06_models/translated_mnist/where/model.pt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from attn_pipeline.metrics.generation import classifier_view
from attn_pipeline.metrics.steering import QUADRANTS, pixel_box
from attn_pipeline.models.classifier import load_feature_extractor
from attn_pipeline.models.where import GlyphCentres, ink_centroid, place_glyph
from attn_pipeline.spec.config import DataPrepConfig
from attn_pipeline.spec.parameters import load_parameters
from attn_pipeline.steer import load_checkpoint_model
from benchmarks._data import load_splits


@torch.no_grad()
def moved_class_kept(
    extractor_path: Path, images: torch.Tensor, labels: torch.Tensor, glyph_size: int
) -> dict[str, tuple[float, float, float]]:
    """Per quadrant: (class kept, accuracy after the move, share of ink kept on the canvas);
    and ``"unmoved"``: (1, accuracy, 1)."""
    extractor = load_feature_extractor(torch.load(extractor_path, weights_only=False))
    side = images.shape[-1]
    centres = GlyphCentres(side, glyph_size)

    def top_class(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [classifier_view(extractor, part).probabilities.argmax(1) for part in batch.split(1000)]
        )

    before = top_class(images)
    rows = {"unmoved": (1.0, float((before == labels).float().mean()), 1.0)}
    centroid = ink_centroid(images)
    for name, box in QUADRANTS.items():
        bounds = pixel_box(box, side)
        target = torch.tensor(
            [(bounds["top"] + bounds["bottom"]) / 2, (bounds["left"] + bounds["right"]) / 2]
        )
        # the box's centre, or the nearest a whole glyph can have (as `where` places one)
        target = centres.clamp(target.expand(len(images), 2))
        # the whole image placed as a glyph, its centre shifted by whole pixels: exact
        shift = torch.round(target - centroid)
        moved = place_glyph(images, side / 2 + shift, side, torch.zeros(()))
        after = top_class(moved)
        rows[name] = (
            float((after == before).float().mean()),
            float((after == labels).float().mean()),
            float(moved.sum() / images.sum()),
        )
    return rows


def peak_cell(attention_map: torch.Tensor) -> torch.Tensor:
    """An edit: the map replaced by all its weight on its largest cell."""
    flat = attention_map.flatten(1)
    peak = torch.zeros_like(flat).scatter_(1, flat.argmax(1, keepdim=True), 1.0)
    return peak.view_as(attention_map)


@torch.no_grad()
def nudged_class_kept(
    extractor_path: Path, model_path: Path, n: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """(class kept, mean confidence) of ``n`` prior samples decoded with their own map and
    with its peak cell (:func:`peak_cell`)."""
    extractor = load_feature_extractor(torch.load(extractor_path, weights_only=False))
    vae = load_checkpoint_model(model_path).vae.eval()
    z = torch.randn(n, vae.latent_dim, generator=torch.Generator().manual_seed(seed))
    before = classifier_view(extractor, torch.sigmoid(vae.decode(z).logits)).probabilities
    after = classifier_view(extractor, torch.sigmoid(vae.decode(z, peak_cell).logits))
    kept = (after.probabilities.argmax(1) == before.argmax(1)).float().mean()
    return float(kept), float(before.max(1).values.mean())


def _label(extractor_path: Path) -> str:
    """``pooling `hash```: which extractor a row measured."""
    checkpoint = torch.load(extractor_path, weights_only=False)
    pooling = checkpoint["config"].get("pooling", "flatten")
    return f"{pooling} `{checkpoint['hash']}`"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("extractors", nargs="+", type=Path)
    parser.add_argument("--env", default="translated_mnist")
    parser.add_argument("--raw", default="mnist", help="the raw data set (globals' raw_data)")
    parser.add_argument("--glyph-size", type=int, default=28)
    parser.add_argument("--model", type=Path, help="a where checkpoint: its samples' floor")
    args = parser.parse_args()
    config = DataPrepConfig.model_validate(load_parameters(env=args.env)["data_prep"])
    _, _, test = load_splits(args.raw, config)
    images, labels = test["images"].float(), test["labels"]
    print(f"{args.env}: {len(images)} test images, {images.shape[-1]}x{images.shape[-1]}")
    print("| extractor | moved to | class kept | accuracy | ink kept |")
    print("|---|---|---|---|---|")
    for path in args.extractors:
        for name, (kept, accuracy, ink) in moved_class_kept(
            path, images, labels, args.glyph_size
        ).items():
            print(f"| {_label(path)} | {name} | {kept:.3f} | {accuracy:.3f} | {ink:.3f} |")
    if args.model is not None:
        print(f"\n{args.model}: 2,000 prior samples, the map replaced by its peak cell")
        print("| extractor | class kept | mean confidence, unmoved |")
        print("|---|---|---|")
        for path in args.extractors:
            kept, confidence = nudged_class_kept(path, args.model)
            print(f"| {_label(path)} | {kept:.3f} | {confidence:.3f} |")


if __name__ == "__main__":
    main()
