"""The model variants, in one table: the configuration's allowed values, the capabilities
the pipelines ask about (a spatial map to supervise and steer, the conv backbone) and what
:func:`attn_pipeline.models.build_vae` builds all come from it.

A new variant is its ``nn.Module`` (``models/attention.py``, or any importable module), one
:class:`VariantSpec` registered here, and a ``<name>.model`` block in the parameters.
Plain data, without torch: the configuration (the project's ground floor) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Where a variant's map of z over the image's positions goes: an extra input channel of
#: the decoder, a gate on its output logits, or the position the decoder's glyph is drawn
#: at (the map carries a latent position of its own: ``models/where.py``).
MapUse = Literal["channel", "gate", "position"]


@dataclass(frozen=True)
class VariantSpec:
    """How a variant's generator differs from the baseline's."""

    name: str
    summary: str
    #: a softmax map of z over positions (the attention loss supervises it, steering edits it)
    spatial_map: MapUse | None = None
    #: the blog post's softmax over the latent code, concatenated to z
    latent_attention: bool = False
    #: ``"module:Class"`` of a block on the conv decoder's feature map, built as
    #: ``Class(channels)`` and returning ``(features, {map name: map})``: conv backbone only
    feature_block: str | None = None

    #: a grid of cells over the image, each an object with presence, centre and appearance
    #: (``models/objects.py``): the scenes' variant, edited object by object
    objects: bool = False

    @property
    def has_spatial_map(self) -> bool:
        return self.spatial_map is not None

    @property
    def conv_only(self) -> bool:
        return self.feature_block is not None


#: name -> spec, in the order the docs and tests list them
VARIANTS: dict[str, VariantSpec] = {}


def add_variant(spec: VariantSpec) -> VariantSpec:
    """Add ``spec`` to the table; a name is registered once."""
    if spec.name in VARIANTS:
        raise ValueError(f"variant '{spec.name}' is registered already")
    VARIANTS[spec.name] = spec
    return spec


def variant_spec(name: str) -> VariantSpec:
    """The spec of ``name``, or a ValueError that lists the registered names."""
    try:
        return VARIANTS[name]
    except KeyError:
        allowed = ", ".join(repr(known) for known in VARIANTS)
        raise ValueError(f"Input should be {allowed}; got {name!r}") from None


_ATTENTION = "attn_pipeline.models.attention"
for _spec in (
    VariantSpec("none", "the baseline VAE: encoder, reparameterisation, decoder"),
    VariantSpec(
        "latent",
        "the blog post's module: a = softmax(w * z); the decoder takes concat(z, a)",
        latent_attention=True,
    ),
    VariantSpec(
        "spatial",
        "a softmax map of z over the decoder's positions, fed to it as an extra channel",
        spatial_map="channel",
    ),
    VariantSpec(
        "spatial_gate",
        "the same map of z, gating the decoder's output logits: the variant that steers",
        spatial_map="gate",
    ),
    VariantSpec(
        "where",
        "a latent position and its map: the decoder draws a glyph where the map puts weight "
        "(needs model.glyph_size; for images whose content can be anywhere)",
        spatial_map="position",
    ),
    VariantSpec(
        "objects",
        "a grid of cells, each an object that is present or not, its centre and its "
        "appearance: the decoder draws every present object's glyph at its centre (SPAIR; "
        "needs model.glyph_size; for scenes of several objects)",
        objects=True,
    ),
    VariantSpec(
        "self",
        "SAGAN self-attention on the decoder's feature map",
        feature_block=f"{_ATTENTION}:SelfAttention2d",
    ),
    VariantSpec(
        "cbam",
        "CBAM (channel, then spatial gate) on the decoder's feature map",
        feature_block=f"{_ATTENTION}:CBAM",
    ),
):
    add_variant(_spec)
