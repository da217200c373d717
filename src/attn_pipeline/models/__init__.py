"""Neural network modules: backbones, attention blocks and the VAE that combines them."""

from .attention import CBAM, LatentSoftmaxAttention, SelfAttention2d, SpatialAttentionMap
from .backbones import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from .checkpoint import load_checkpoint, make_checkpoint
from .vae import (
    VAE,
    DecoderOutput,
    Generator,
    ImageSampler,
    VAEOutput,
    build_vae,
    count_parameters,
)

__all__ = [
    "CBAM",
    "VAE",
    "SelfAttention2d",
    "SpatialAttentionMap",
    "ConvDecoder",
    "ConvEncoder",
    "DecoderOutput",
    "Generator",
    "ImageSampler",
    "LatentSoftmaxAttention",
    "MLPDecoder",
    "MLPEncoder",
    "VAEOutput",
    "build_vae",
    "load_checkpoint",
    "make_checkpoint",
    "count_parameters",
]
