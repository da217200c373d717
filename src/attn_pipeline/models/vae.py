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

from attn_pipeline.spec.config import ModelConfig
from attn_pipeline.spec.variants import variant_spec

from .attention import (
    LatentSoftmaxAttention,
    OutputGate,
    SpatialAttentionMap,
    as_decoder_channel,
)
from .backbones import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, conv_sides
from .objects import WHAT, CellEncoder, CellLayout, ObjectCanvas
from .where import GlyphCentres, GlyphPlacement, PositionMap, WhereEncoder, cut_window


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
    which either the decoder takes as an extra channel, or, with ``output_gate``, gates the
    decoder's output logits, or, with ``placement``, says where the decoder's glyph (drawn
    from ``z`` without its last two dimensions, the position) goes on the image; feature
    blocks (self-attention, CBAM) live inside the decoder.
    """

    def __init__(
        self,
        decoder: nn.Module,
        *,
        latent_attention: nn.Module | None = None,
        spatial_map: nn.Module | None = None,
        output_gate: OutputGate | None = None,
        placement: GlyphPlacement | None = None,
        objects: ObjectCanvas | None = None,
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.latent_attention = latent_attention
        self.spatial_map = spatial_map
        self.output_gate = output_gate
        self.placement = placement
        self.objects = objects

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images drawn."""
        drawn = tuple(self.decoder.output_bias.bias.shape)
        canvas = self.canvas_side
        return drawn if canvas is None else (drawn[0], canvas, canvas)

    @property
    def canvas_side(self) -> int | None:
        """The side of the canvas the decoder's glyphs are placed on; None: the decoder
        draws the whole image."""
        if self.placement is not None:
            return self.placement.canvas
        if self.objects is not None:
            return self.objects.layout.canvas
        return None

    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start the decoder's output at the data's mean image ``(C, H, W)`` (a glyph: at
        the window of it a glyph in the middle would cover)."""
        if self.canvas_side is not None:
            middle = torch.tensor([[mean_image.shape[-2] / 2, mean_image.shape[-1] / 2]])
            mean_image = cut_window(mean_image[None], middle, self.image_glyph_side)[0]
        self.decoder.output_bias.init_from_mean(mean_image)

    @property
    def image_glyph_side(self) -> int:
        return self.decoder.output_bias.bias.shape[-1]

    def forward(self, z: torch.Tensor, edit: AttentionEdit | None = None) -> DecoderOutput:
        maps: dict[str, torch.Tensor] = {}
        if self.objects is not None:  # the objects' edits change z (models/scene_edits.py)
            cells = self.objects.layout.split(z)
            glyphs, _ = self.decoder(cells[..., WHAT].flatten(0, 1))  # each cell's what
            logits, present = self.objects(cells, glyphs)
            return DecoderOutput(logits=logits, attention={"presence": present[:, None]})
        code = z
        if self.latent_attention is not None:
            code, maps["latent"] = self.latent_attention(z)
        spatial = None
        if self.spatial_map is not None:
            spatial = self.spatial_map(z)
            if edit is not None:
                spatial = edit(spatial)
            maps["spatial"] = spatial
        if self.placement is not None:
            glyph, decoder_maps = self.decoder(code[:, :-2])  # z_what: z without z_where
            logits = self.placement(glyph, spatial)
        elif self.output_gate is not None:
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
        return self.generator.image_shape

    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start the decoder's output at the training data's mean image ``(C, H, W)``."""
        self.generator.init_output_bias(mean_image)

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


def _backbone(
    config: ModelConfig,
    shape: tuple[int, int, int],
    *,
    code_dim: int,
    map_values: int,
    block_name: str | None,
    attention_resolution: int | None,
) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder of ``config.backbone`` for images of ``shape``."""
    d = config.latent_dim
    if config.backbone == "mlp":
        encoder: nn.Module = MLPEncoder(
            in_features=shape[0] * shape[1] * shape[2], hidden_dim=config.hidden_dim, latent_dim=d
        )
        decoder: nn.Module = MLPDecoder(
            in_dim=code_dim + map_values, hidden_dim=config.hidden_dim, image_shape=shape
        )
        return encoder, decoder
    # built in this order (encoder, block, decoder): a seed gives the same initial weights
    encoder = ConvEncoder(image_shape=shape, channels=config.conv_channels, latent_dim=d)
    c1, c2 = config.conv_channels
    width = c2 if attention_resolution == conv_sides(shape)[0] else c1
    block = _feature_block(block_name)(width) if block_name else None
    decoder = ConvDecoder(
        in_dim=code_dim,
        channels=config.conv_channels,
        image_shape=shape,
        attention_resolution=attention_resolution,
        block=block,
        takes_map=map_values > 0,
    )
    return encoder, decoder


def build_vae(config: ModelConfig, image_shape: tuple[int, int, int]) -> VAE:
    """Build the VAE a :class:`ModelConfig` describes for images of ``image_shape``
    ``(C, H, W)`` (the data set's), weights freshly initialised."""
    spec = variant_spec(config.variant)
    d, r = config.latent_dim, config.attention_side(image_shape[-1])
    if spec.spatial_map == "position":
        return _build_where(config, image_shape)
    if spec.objects:
        return _build_objects(config, image_shape)
    latent_attention = LatentSoftmaxAttention(d) if spec.latent_attention else None
    spatial_map = SpatialAttentionMap(d, size=r) if spec.has_spatial_map else None
    # the map is an extra channel of the decoder, or it gates the output
    output_gate = OutputGate(config.gate_gain) if spec.spatial_map == "gate" else None
    map_channel = spec.spatial_map == "channel"
    encoder, decoder = _backbone(
        config,
        image_shape,
        code_dim=2 * d if latent_attention is not None else d,
        # the MLP decoder takes the map's values with the code, the conv one as a channel
        map_values=(r * r if config.backbone == "mlp" else 1) if map_channel else 0,
        block_name=spec.feature_block,
        attention_resolution=r,
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


def _build_where(config: ModelConfig, image_shape: tuple[int, int, int]) -> VAE:
    """The ``where`` variant (:mod:`attn_pipeline.models.where`): a glyph of
    ``config.glyph_size`` drawn from ``z_what`` (``latent_dim`` dimensions) at the position
    ``z_where`` (2 more) carries, through a map of ``attention_resolution`` cells a side."""
    channels, canvas, _ = image_shape
    glyph = config.glyph_size
    centres = GlyphCentres(canvas, glyph)
    glyph_encoder, decoder = _backbone(
        config,
        (channels, glyph, glyph),
        code_dim=config.latent_dim,
        map_values=0,
        block_name=None,
        attention_resolution=None,  # nothing attends inside the decoder
    )
    position_map = PositionMap(centres, canvas, config.attention_side(canvas))
    generator = Generator(
        decoder, spatial_map=position_map, placement=GlyphPlacement(position_map, canvas)
    )
    return VAE(
        WhereEncoder(glyph_encoder, centres, glyph), generator, latent_dim=config.latent_dim + 2
    )


def _build_objects(config: ModelConfig, image_shape: tuple[int, int, int]) -> VAE:
    """The ``objects`` variant (:mod:`attn_pipeline.models.objects`): a grid of
    ``attention_resolution`` cells a side, each an object with presence, centre and
    ``latent_dim`` dimensions of appearance, its glyph of ``glyph_size`` drawn by the
    ``backbone``'s decoder and read by its encoder."""
    channels, canvas, _ = image_shape
    glyph = config.glyph_size
    layout = CellLayout(canvas, config.attention_side(canvas), glyph, config.latent_dim)
    glyph_encoder, glyph_decoder = _backbone(
        config,
        (channels, glyph, glyph),
        code_dim=config.latent_dim,
        map_values=0,
        block_name=None,
        attention_resolution=None,
    )
    encoder = CellEncoder(layout, channels, config.conv_channels[0], glyph_encoder)
    generator = Generator(glyph_decoder, objects=ObjectCanvas(layout))
    return VAE(encoder, generator, latent_dim=layout.latent_dim)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
