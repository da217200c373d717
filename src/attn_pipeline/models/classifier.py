"""The FID-proxy's feature extractor: a small CNN classifier trained on the same data set.

Inception weights cannot be downloaded here, and MNIST is far from ImageNet anyway; a
classifier trained on the data set itself gives features that separate its classes.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

from attn_pipeline.spec.config import ExtractorPooling, FeatureExtractorConfig


class FeatureClassifier(nn.Module):
    """LeNet-style CNN: two conv blocks (H -> H/2 -> H/4; MNIST 28 -> 14 -> 7), a narrow
    feature layer, one logit per class.

    The feature layer is what the FID-proxy compares. It is kept narrow (``feature_dim``,
    128 by default) because the Fréchet distance's small-sample bias grows with the width.

    ``pooling`` says how the last feature map becomes the feature layer's input:
    ``flatten`` (the default: a dense layer over every position) or ``global_max`` (two more
    conv layers, receptive field 26 pixels, then the maximum over positions: the same glyph
    anywhere on the image gives the same features, which a data set whose content can be
    anywhere needs).

    Shapes: ``x (B, C, H, W) -> logits (B, n_classes)`` for ``image_shape (C, H, W)``;
    :meth:`features` gives ``(B, feature_dim)``.
    """

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        n_classes: int,
        feature_dim: int = 128,
        channels: tuple[int, int] = (32, 64),
        dropout: float = 0.3,
        pooling: ExtractorPooling = "flatten",
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        image_channels, height, width = self.image_shape
        c1, c2 = channels
        blocks = [
            nn.Conv2d(image_channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c1, H/2, W/2)
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, H/4, W/4)
        ]
        if pooling == "flatten":
            head_in = c2 * (height // 4) * (width // 4)
            blocks += [nn.Flatten()]
        else:
            head_in = 2 * c2
            blocks += [
                nn.Conv2d(c2, head_in, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(head_in, head_in, 3, padding=1),
                nn.ReLU(),  # (B, 2 c2, H/4, W/4)
                nn.AdaptiveMaxPool2d(1),
                nn.Flatten(),  # (B, 2 c2)
            ]
        self.body = nn.Sequential(*blocks, nn.Linear(head_in, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, n_classes))

    def check_input(self, images: torch.Tensor, what: str) -> None:
        """Raise ``ValueError`` when ``images (N, C, H, W)`` are not of the shape the
        classifier was trained on."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"the feature extractor was trained on images of shape {self.image_shape}, "
                f"but {what} are {tuple(images.shape[1:])}: delete the data set's stored "
                "extractor (data/06_models/feature_extractor/) and set "
                "feature_extractor.use_reference: false to train one on these images"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, feature_dim)``: the penultimate layer (after its ReLU)."""
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


def extractor_image_shape(checkpoint: dict[str, Any]) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images an extractor checkpoint was trained on: recorded under
    ``image_shape``, or (a checkpoint without it, square images) read off its weights."""
    if "image_shape" in checkpoint:
        return tuple(checkpoint["image_shape"])
    state = checkpoint["state_dict"]
    channels, c2 = state["body.0.weight"].shape[1], state["body.3.weight"].shape[0]
    quarter = math.isqrt(state["body.7.weight"].shape[1] // c2)
    return int(channels), 4 * quarter, 4 * quarter


def load_feature_extractor(checkpoint: dict[str, Any]) -> FeatureClassifier:
    """Rebuild the classifier a checkpoint describes, in eval mode on the CPU."""
    config = FeatureExtractorConfig.model_validate(checkpoint["config"])
    model = FeatureClassifier(
        image_shape=extractor_image_shape(checkpoint),
        n_classes=checkpoint["state_dict"]["head.1.weight"].shape[0],
        feature_dim=config.feature_dim,
        pooling=config.pooling,
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
