"""The VAE: an encoder, the reparameterisation, and a generator that may hold attention.

Every variant is a :class:`VAE`; the ``model.variant`` parameter only decides which
attention block, if any, sits in front of the decoder (:func:`build_vae`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from attn_pipeline.config import ModelConfig

from .attention import LatentSoftmaxAttention
from .backbones import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder


@dataclass
class DecoderOutput:
    """``logits (B, C, H, W)`` and the attention maps that produced them (name -> tensor)."""

    logits: torch.Tensor
    attention: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class VAEOutput:
    """Everything the loss, the metrics and the reports need from one forward pass."""

    logits: torch.Tensor  # (B, C, H, W) Bernoulli logits
    mu: torch.Tensor  # (B, D)
    logvar: torch.Tensor  # (B, D)
    z: torch.Tensor  # (B, D) the code that was decoded
    attention: dict[str, torch.Tensor] = field(default_factory=dict)


class Generator(nn.Module):
    """``z (B, D) -> DecoderOutput``: optional attention over ``z``, then the decoder."""

    def __init__(self, decoder: nn.Module, attention: nn.Module | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.attention = attention

    def forward(self, z: torch.Tensor) -> DecoderOutput:
        maps: dict[str, torch.Tensor] = {}
        code = z
        if self.attention is not None:
            code, maps["latent"] = self.attention(z)
        return DecoderOutput(logits=self.decoder(code), attention=maps)


class VAE(nn.Module):
    """Variational autoencoder (Kingma & Welling, 2014, arXiv:1312.6114)."""

    def __init__(self, encoder: nn.Module, generator: Generator, *, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.generator = generator
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W) -> mu (B, D), logvar (B, D)``."""
        return self.encoder(x)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``z = mu + sigma * eps`` with ``eps ~ N(0, I)``, differentiable in mu and logvar."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        """``z (B, D) -> DecoderOutput`` (logits and attention maps)."""
        return self.generator(z)

    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start the decoder's output at the training data's mean image ``(C, H, W)``."""
        self.generator.decoder.output_bias.init_from_mean(mean_image)

    def forward(
        self, x: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> VAEOutput:
        """Encode, draw ``z`` (or take the posterior mean when ``sample=False``), decode."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator) if sample else mu
        decoded = self.decode(z)
        return VAEOutput(decoded.logits, mu, logvar, z, decoded.attention)


class ImageSampler(nn.Module):
    """The generator alone, as a plain tensor function for serving and MLflow.

    ``z (B, D) -> images (B, C, H, W)`` with pixel intensities in [0, 1].
    """

    def __init__(self, generator: Generator, *, latent_dim: int) -> None:
        super().__init__()
        self.generator = generator
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.generator(z).logits)


def build_vae(config: ModelConfig) -> VAE:
    """Build the VAE a :class:`ModelConfig` describes (weights freshly initialised)."""
    image_shape = (config.image_channels, config.image_size, config.image_size)
    if config.backbone == "conv" and config.image_size != 28:
        raise ValueError("the conv backbone is built for 28x28 images; use backbone: mlp")
    attention = LatentSoftmaxAttention(config.latent_dim) if config.variant == "latent" else None
    code_dim = 2 * config.latent_dim if attention is not None else config.latent_dim
    if config.backbone == "mlp":
        n_pixels = image_shape[0] * image_shape[1] * image_shape[2]
        encoder: nn.Module = MLPEncoder(
            in_features=n_pixels, hidden_dim=config.hidden_dim, latent_dim=config.latent_dim
        )
        decoder: nn.Module = MLPDecoder(
            in_dim=code_dim, hidden_dim=config.hidden_dim, image_shape=image_shape
        )
    else:
        encoder = ConvEncoder(
            image_channels=config.image_channels,
            channels=config.conv_channels,
            latent_dim=config.latent_dim,
        )
        decoder = ConvDecoder(
            in_dim=code_dim, channels=config.conv_channels, image_channels=config.image_channels
        )
    return VAE(encoder, Generator(decoder, attention), latent_dim=config.latent_dim)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
