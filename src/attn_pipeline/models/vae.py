"""The VAE: an encoder, the reparameterisation, and a generator that may hold attention.

Every variant is a :class:`VAE`; the ``model.variant`` parameter only decides which
attention block, if any, sits in front of the decoder (:func:`build_vae`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from attn_pipeline.config import ModelConfig
from attn_pipeline.variants import variant_spec

from .attention import (
    LatentSoftmaxAttention,
    OutputGate,
    SpatialAttentionMap,
    as_decoder_channel,
)
from .backbones import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, conv_sides


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

    def float(self) -> VAEOutput:
        """The same output in fp32 (a forward pass under bfloat16 autocast gives bf16)."""
        return VAEOutput(
            self.logits.float(),
            self.mu.float(),
            self.logvar.float(),
            self.z.float(),
            {name: value.float() for name, value in self.attention.items()},
        )


#: An edit of an attention map at generation time: ``(B, 1, h, w) -> (B, 1, h, w)``.
AttentionEdit = Callable[[torch.Tensor], torch.Tensor]


class Generator(nn.Module):
    """``z (B, D) -> DecoderOutput``: the decoder with whatever attention the variant has.

    ``latent_attention`` (the blog post's ``softmax(w * z)``) widens the code;
    ``spatial_map`` turns ``z`` into a map over image positions (that ``edit`` may change),
    which either the decoder takes as an extra channel or, with ``output_gate``, gates the
    decoder's output logits; feature blocks (self-attention, CBAM) live inside the decoder.
    """

    def __init__(
        self,
        decoder: nn.Module,
        *,
        latent_attention: nn.Module | None = None,
        spatial_map: nn.Module | None = None,
        output_gate: OutputGate | None = None,
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.latent_attention = latent_attention
        self.spatial_map = spatial_map
        self.output_gate = output_gate

    def forward(self, z: torch.Tensor, edit: AttentionEdit | None = None) -> DecoderOutput:
        maps: dict[str, torch.Tensor] = {}
        code = z
        if self.latent_attention is not None:
            code, maps["latent"] = self.latent_attention(z)
        spatial = None
        if self.spatial_map is not None:
            spatial = self.spatial_map(z)
            if edit is not None:
                spatial = edit(spatial)
            maps["spatial"] = spatial
        if self.output_gate is not None:
            logits, decoder_maps = self.decoder(code)
            logits = self.output_gate(logits, spatial)
        else:
            channel = as_decoder_channel(spatial) if spatial is not None else None
            logits, decoder_maps = self.decoder(code, channel)
        return DecoderOutput(logits=logits, attention=maps | decoder_maps)


class VAE(nn.Module):
    """Variational autoencoder (Kingma & Welling, 2014, arXiv:1312.6114)."""

    def __init__(
        self,
        encoder: nn.Module,
        generator: Generator,
        *,
        latent_dim: int,
        attention_loss_weight: float = 0.0,
        attention_target: str = "error",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.generator = generator
        self.latent_dim = latent_dim
        self.attention_loss_weight = attention_loss_weight
        self.attention_target = attention_target

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

    def decode(self, z: torch.Tensor, edit: AttentionEdit | None = None) -> DecoderOutput:
        """``z (B, D) -> DecoderOutput`` (logits and attention maps), optionally steered."""
        return self.generator(z, edit)

    def attention_map_of(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial map the model gives images ``x (B, C, H, W)`` (at their posterior
        means): ``(B, 1, h, w)``. Only for variants with a spatial map."""
        if self.generator.spatial_map is None:
            raise ValueError("this variant has no spatial attention map")
        mu, _ = self.encode(x)
        return self.generator.spatial_map(mu)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the model encodes and draws."""
        return tuple(self.generator.decoder.output_bias.bias.shape)

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


def _feature_block(path: str) -> type[nn.Module]:
    """The class a spec's ``"module:Class"`` names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_vae(config: ModelConfig, image_shape: tuple[int, int, int]) -> VAE:
    """Build the VAE a :class:`ModelConfig` describes for images of ``image_shape``
    ``(C, H, W)`` (the data set's), weights freshly initialised."""
    spec = variant_spec(config.variant)
    d, r = config.latent_dim, config.attention_resolution
    latent_attention = LatentSoftmaxAttention(d) if spec.latent_attention else None
    spatial_map = SpatialAttentionMap(d, size=r) if spec.has_spatial_map else None
    # the map is an extra channel of the decoder, or it gates the output
    output_gate = OutputGate(config.gate_gain) if spec.spatial_map == "gate" else None
    map_channel = spec.spatial_map == "channel"
    code_dim = 2 * d if latent_attention is not None else d
    if config.backbone == "mlp":
        n_pixels = image_shape[0] * image_shape[1] * image_shape[2]
        encoder: nn.Module = MLPEncoder(
            in_features=n_pixels, hidden_dim=config.hidden_dim, latent_dim=d
        )
        map_values = r * r if map_channel else 0
        decoder: nn.Module = MLPDecoder(
            in_dim=code_dim + map_values, hidden_dim=config.hidden_dim, image_shape=image_shape
        )
    else:
        encoder = ConvEncoder(image_shape=image_shape, channels=config.conv_channels, latent_dim=d)
        c1, c2 = config.conv_channels
        coarse, _ = conv_sides(image_shape)
        width = c2 if r == coarse else c1
        block = _feature_block(spec.feature_block)(width) if spec.feature_block else None
        decoder = ConvDecoder(
            in_dim=code_dim,
            channels=config.conv_channels,
            image_shape=image_shape,
            attention_resolution=r,
            block=block,
            takes_map=map_channel,
        )
    generator = Generator(
        decoder,
        latent_attention=latent_attention,
        spatial_map=spatial_map,
        output_gate=output_gate,
    )
    return VAE(
        encoder,
        generator,
        latent_dim=d,
        attention_loss_weight=config.attention_loss_weight,
        attention_target=config.attention_target,
    )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
