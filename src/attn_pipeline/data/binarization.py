"""Dynamically binarised MNIST: pixels drawn from Bernoulli(grey level).

Published MNIST likelihoods (e.g. Burda et al., 2016) are for binary pixels: training draws
a fresh binary image at every visit ("dynamic" binarisation), evaluation uses one fixed
draw. A split made with ``data_prep.binarize: true`` carries the flag ``binarized``; the
images themselves stay grey, so nothing else needs two versions of the data.
"""

from __future__ import annotations

import torch

#: the key of the flag in a split dict (images, labels, binarized)
FLAG = "binarized"
#: seed of the one fixed draw used wherever binarised images are evaluated
EVALUATION_SEED = 4321


def is_binarized(split: dict[str, torch.Tensor]) -> bool:
    """Whether a split was prepared for dynamic binarisation."""
    return bool(split.get(FLAG, False))


def fixed_binarization(images: torch.Tensor, seed: int = EVALUATION_SEED) -> torch.Tensor:
    """One seeded Bernoulli draw of grey ``images`` in [0, 1] (same shape, values 0 or 1)."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    return torch.bernoulli(images, generator=generator)


def evaluation_images(split: dict[str, torch.Tensor]) -> torch.Tensor:
    """The images a model is evaluated on: fixed binary draws for a binarised split."""
    images = split["images"]
    return fixed_binarization(images) if is_binarized(split) else images
