"""The FID-proxy's feature extractor: a small CNN classifier trained on the same data set.

Inception weights cannot be downloaded here, and MNIST is far from ImageNet anyway; a
classifier trained on the data set itself gives features that separate its classes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from attn_pipeline.config import FeatureExtractorConfig


class FeatureClassifier(nn.Module):
    """LeNet-style CNN: two conv blocks (28 -> 14 -> 7), a narrow feature layer, 10 logits.

    The feature layer is what the FID-proxy compares. It is kept narrow (``feature_dim``,
    128 by default) because the Fréchet distance's small-sample bias grows with the width.

    Shapes: ``x (B, C, 28, 28) -> logits (B, n_classes)``; :meth:`features` gives
    ``(B, feature_dim)``.
    """

    def __init__(
        self,
        *,
        image_channels: int = 1,
        n_classes: int = 10,
        feature_dim: int = 128,
        channels: tuple[int, int] = (32, 64),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(image_channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c1, 14, 14)
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, 7, 7)
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, n_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, 28, 28) -> (B, feature_dim)``: the penultimate layer (after its ReLU)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def state_dict_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """A content hash of the weights (names, shapes, dtypes and bytes): 16 hex digits.

    Two extractors with the same hash compute the same features, so FID-proxy figures
    tagged with the same hash are comparable.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_feature_extractor(checkpoint: dict[str, Any]) -> FeatureClassifier:
    """Rebuild the classifier a checkpoint describes, in eval mode on the CPU."""
    config = FeatureExtractorConfig.model_validate(checkpoint["config"])
    model = FeatureClassifier(
        image_channels=checkpoint["image_channels"], feature_dim=config.feature_dim
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
