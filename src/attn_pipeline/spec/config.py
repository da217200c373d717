"""Typed configuration: the parameters files, validated once at the node boundary.

Kedro (>= 1.5) instantiates these models from ``params:<key>`` when a node's argument is
annotated with one of them, so a bad value stops ``kedro run`` before the first node runs,
with pydantic's message naming the key and what is allowed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import click
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveInt,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from attn_pipeline.spec.metric_table import METRICS
from attn_pipeline.spec.variants import VARIANTS, variant_spec

#: Arithmetic of a training's forward pass (:mod:`attn_pipeline.training.precision`).
Precision = Literal["auto", "fp32", "bf16"]
Backbone = Literal["conv", "mlp"]
#: A side stated relative to the image's, so that one setting fits every canvas.
RelativeSide = Literal["half", "quarter"]
#: Where a step runs.
Device = Annotated[
    Literal["auto", "cpu", "cuda", "mps"],
    Field(description="auto: CUDA where there is one, else the CPU"),
]


class ConfigError(click.ClickException, ValueError):
    """A configuration value that cannot work, caught before any long work starts.

    A ``ClickException``: ``kedro run`` prints its message as one line (no traceback)
    and exits 1."""


class _Config(BaseModel):
    # Unknown keys are typos more often than not: reject them instead of ignoring them.
    # A non-finite float (learning_rate=inf) cannot train: refused with the other values.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataPrepConfig(_Config):
    """How raw IDX arrays become model-input tensors (``params:data_prep``)."""

    val_size: int = Field(
        5000,
        ge=0,
        description="images of the whole training file held out for validation; a subset "
        "holds out the same share of its images",
    )
    seed: int = Field(0, description="seed of the train/validation split and of the subsets")
    subset_size: PositiveInt | None = Field(
        None, description="use only this many training-file images (before the split)"
    )
    test_subset_size: PositiveInt | None = Field(None, description="use only this many test images")
    canvas_size: PositiveInt | None = Field(
        None,
        description="place every image at a seeded, uniformly random position of a canvas "
        "of this side (translated MNIST: 40); null: the images as they are",
    )
    objects_per_image: tuple[PositiveInt, PositiveInt] | None = Field(
        None,
        description="scenes: [fewest, most] digits per canvas (multi-MNIST: [1, 3]), each "
        "digit of a split used once, at seeded positions where no two digits' ink boxes "
        "meet; needs canvas_size. The sizes above then count digits; a split's images are "
        "its scenes",
    )
    binarize: bool = Field(
        False,
        description="dynamically binarised pixels: training draws each pixel from "
        "Bernoulli(grey level) every time it sees it; evaluation uses one fixed draw",
    )

    @model_validator(mode="after")
    def _scenes_on_a_canvas(self) -> DataPrepConfig:
        if self.objects_per_image is None:
            return self
        fewest, most = self.objects_per_image
        if fewest > most:
            raise ValueError(
                f"objects_per_image is [fewest, most] digits per scene: got [{fewest}, {most}]"
            )
        if self.canvas_size is None:
            raise ValueError(
                "objects_per_image places several digits on one canvas: set canvas_size too "
                "(multi-MNIST: 64)"
            )
        return self

    def split_sizes(self, n_file: int) -> tuple[int, int]:
        """(training images, validation images) taken from a training file of ``n_file``.

        ``val_size`` counts images of the whole file; a subset of it holds out the same
        share (MNIST: 5000 of 60,000, so ``subset_size: 6000`` holds out 500)."""
        if self.val_size >= n_file:
            raise ConfigError(
                f"data_prep.val_size ({self.val_size}) leaves no training images out of the "
                f"training file's {n_file}: lower data_prep.val_size"
            )
        if self.subset_size is not None and self.subset_size > n_file:
            raise ConfigError(
                f"data_prep.subset_size is {self.subset_size} but the training file has "
                f"{n_file} images: lower it, or set it to null to use them all"
            )
        n_used = self.subset_size or n_file
        n_val = round(self.val_size * n_used / n_file)
        if n_val >= n_used:
            raise ConfigError(
                f"data_prep.subset_size ({n_used}) leaves no training images beside its "
                f"{n_val} validation images: raise data_prep.subset_size"
            )
        return n_used - n_val, n_val


class ModelConfig(_Config):
    """One model variant (``params:<namespace>.model``). The images' shape is the data
    set's (the training split's), not a setting: see :func:`attn_pipeline.models.build_vae`."""

    variant: str = Field("none", description="a name of attn_pipeline.spec.variants.VARIANTS")
    backbone: Backbone = Field("conv", description="conv, or mlp (784-400-z)")
    latent_dim: PositiveInt = Field(20, description="dimensions of the latent code z")
    hidden_dim: PositiveInt = Field(400, description="MLP backbone: width of the hidden layer")
    conv_channels: tuple[PositiveInt, PositiveInt] = Field(
        (32, 64), description="conv backbone: channels at 14x14 and at 7x7"
    )
    attention_resolution: PositiveInt | RelativeSide = Field(
        "half",
        description="side of the map the attention works on, relative to the image's: the "
        "conv backbone's feature maps are at a half and a quarter of it (28x28 images: 14 "
        "and 7); a number of cells is taken as it is",
    )
    attention_loss_weight: float = Field(
        0.0, ge=0, description="weight of the attention loss (variants with a spatial map)"
    )
    gate_gain: float = Field(
        1.3,
        gt=0,
        description="spatial_gate: log-odds added per factor e of map weight (fixed, not learned)",
    )
    glyph_size: PositiveInt | None = Field(
        None,
        description="where: the side of the glyph the decoder draws and the encoder reads "
        "(translated MNIST: 28, the digits' own size); other variants: unused",
    )
    attention_target: Literal["error", "ink"] = Field(
        "error",
        description="what the attention loss ties the map to: the per-pixel reconstruction "
        "error (the blog post's loss) or the image's ink (pixel intensity) distribution",
    )

    def attention_side(self, image_side: int) -> int:
        """:attr:`attention_resolution` in cells, for images ``image_side`` pixels a side."""
        if isinstance(self.attention_resolution, int):
            return self.attention_resolution
        return image_side // (2 if self.attention_resolution == "half" else 4)

    @field_validator("variant")
    @classmethod
    def _registered(cls, name: str) -> str:
        variant_spec(name)  # the error lists the registered names
        return name

    @model_validator(mode="after")
    def _variant_fits_backbone(self) -> ModelConfig:
        spec = variant_spec(self.variant)
        if self.backbone == "mlp" and spec.conv_only:
            mlp_ready = [name for name, other in VARIANTS.items() if not other.conv_only]
            raise ValueError(
                f"variant '{self.variant}' attends over conv feature maps and needs "
                f"backbone: conv; with backbone: mlp use one of {mlp_ready}"
            )
        if (spec.spatial_map == "position" or spec.objects) and self.glyph_size is None:
            raise ValueError(
                f"variant '{self.variant}' draws a glyph on the image: set model.glyph_size "
                "(the glyph's side, smaller than the images'; translated MNIST: 28)"
            )
        if self.attention_loss_weight > 0 and spec.spatial_map == "position":
            raise ValueError(
                f"variant '{self.variant}' has a map that follows its latent position, with "
                "nothing for the attention loss to teach: set attention_loss_weight to 0"
            )
        if self.attention_loss_weight > 0 and not spec.has_spatial_map:
            with_map = [name for name, other in VARIANTS.items() if other.has_spatial_map]
            raise ValueError(
                f"attention_loss_weight applies to variants with a spatial map "
                f"({with_map}), not to '{self.variant}': set it to 0"
            )
        return self


class TrainConfig(_Config):
    """The optimisation budget, shared by every variant (``params:train``)."""

    epochs: PositiveInt = Field(8, description="the budget every entry trains for")
    batch_size: PositiveInt = 128
    learning_rate: float = Field(1e-3, gt=0, description="Adam's step size")
    beta: float = Field(1.0, ge=0, description="weight of the KL term")
    kl_warmup_epochs: int = Field(
        2,
        ge=0,
        description="epochs over which beta ramps up linearly from 0: without it a decoder "
        "can learn to ignore z in the first epoch (posterior collapse)",
    )
    seed: int = Field(0, description="seed of the weights and the batches (a study sets it)")
    device: Device = "auto"
    precision: Precision = Field(
        "fp32",
        description="arithmetic of the forward pass: fp32, bf16 (autocast; weights, optimizer "
        "and checkpoints stay fp32) or auto (bf16 where the device does it natively)",
    )
    resume: bool = Field(
        True,
        description="continue after the last epoch saved for this exact configuration "
        "(false: delete its saved epochs and train from the first)",
    )

    def check_fits(self, n_train: int) -> None:
        """Raise ``ConfigError`` when the batch size exceeds the training set."""
        if self.batch_size > n_train:
            raise ConfigError(
                f"train.batch_size is {self.batch_size} but the training split has only "
                f"{n_train} images: lower train.batch_size to at most {n_train}, or raise "
                "data_prep.subset_size / lower data_prep.val_size."
            )


class EvaluateConfig(_Config):
    """Test-set evaluation (``params:evaluate``)."""

    batch_size: PositiveInt = 500
    seed: int = Field(0, description="seed of the posterior and prior samples the metrics draw")
    device: Device = "auto"
    n_samples: int = Field(
        10000, ge=4, description="N: model samples (and test images) the FID-proxy compares"
    )
    nll_samples: PositiveInt = Field(
        100, description="K: importance samples per image (1000+ for final figures)"
    )
    nll_images: PositiveInt | None = Field(
        2000,
        description="test images the IW NLL averages over (a seeded subset, the same for "
        "every entry; null: all): K decodes per image make it the slowest metric",
    )
    steer_samples: PositiveInt = Field(
        1000, description="prior samples the steering benchmark edits (variants with a map)"
    )
    kid_subsets: PositiveInt = Field(100, description="the KID-proxy's random subsets")
    kid_subset_size: int = Field(1000, ge=2, description="images in each KID subset")
    precision_recall_k: PositiveInt = Field(
        3, description="k of the k-nearest-neighbour balls of precision and recall"
    )


#: How the extractor's last feature map becomes its feature layer's input.
ExtractorPooling = Literal["flatten", "global_max"]


class FeatureExtractorConfig(_Config):
    """The FID-proxy's classifier (``params:feature_extractor``), trained once per data set."""

    epochs: PositiveInt = 4
    batch_size: PositiveInt = 128
    learning_rate: float = Field(1e-3, gt=0)
    feature_dim: int = Field(
        128,
        ge=16,
        le=512,
        description="width of the compared features: the Fréchet distance's bias grows with it",
    )
    pooling: ExtractorPooling = Field(
        "flatten",
        description="flatten: a dense layer over every position; global_max: the maximum "
        "over positions (the same glyph anywhere gives the same features)",
    )
    seed: int = 0
    device: Device = "auto"
    min_test_accuracy: float = Field(
        0.99, ge=0, le=1, description="warn when the trained extractor scores below this"
    )
    precision: Precision = Field(
        "fp32", description="as train.precision, for the extractor's training"
    )
    use_reference: bool = Field(
        True,
        description="with no extractor stored in the project folder, use the reference "
        "shipped with the package (false: train one)",
    )


#: A position along the image's side: pixels, or a share of the side (``"50%"``), so that one
#: setting fits every canvas.
Position = NonNegativeInt | Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)?%$")]


def _amount(position: int | str) -> float:
    """A position's number: pixels, or the share in percent."""
    return float(position.removesuffix("%")) if isinstance(position, str) else position


def _pixels(position: int | str, image_size: int) -> int:
    if isinstance(position, int):
        return position
    return round(_amount(position) / 100 * image_size)


class ScaleRectangleEdit(_Config):
    """Multiply the attention inside the rectangle rows ``[top, bottom)`` x columns
    ``[left, right)``, each in pixels or as a share of the image's side (the default: the
    top half). Checked against the data set's image size before any node runs."""

    kind: Literal["scale_rectangle"] = "scale_rectangle"
    top: Position = 0
    bottom: Position = "50%"
    left: Position = 0
    right: Position = "100%"
    factor: float = Field(8.0, ge=0, description="what the map's weight inside is multiplied by")

    @model_validator(mode="after")
    def _non_empty(self) -> ScaleRectangleEdit:
        # ends in one unit are compared here; pixels against a share of the side need the
        # image size (pixels(): before any node, from the data's side, and when applied)
        for low, high in ((self.top, self.bottom), (self.left, self.right)):
            if type(low) is type(high) and _amount(high) <= _amount(low):
                raise ValueError(
                    f"empty rectangle rows [{self.top}, {self.bottom}) x cols "
                    f"[{self.left}, {self.right}): need top < bottom and left < right"
                )
        return self

    def pixels(self, image_size: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) in pixels of ``image_size`` square images."""
        top, bottom, left, right = (
            _pixels(p, image_size) for p in (self.top, self.bottom, self.left, self.right)
        )
        if bottom <= top or right <= left:
            raise ConfigError(
                f"generate.steering's rectangle rows [{top}, {bottom}) x cols [{left}, {right}) "
                f"of the {image_size}x{image_size} images is empty: need top < bottom and "
                "left < right"
            )
        if max(bottom, right) > image_size:
            raise ConfigError(
                f"generate.steering's rectangle rows [{top}, {bottom}) x cols "
                f"[{left}, {right}) reaches outside the {image_size}x{image_size} "
                f"images: keep bottom and right at most {image_size} (or 100%)"
            )
        return top, bottom, left, right


class ReplaceMapEdit(_Config):
    """Replace the attention map by ``values``, a grid of non-negative weights."""

    kind: Literal["replace"] = "replace"
    values: list[list[float]] = Field(min_length=1)

    @model_validator(mode="after")
    def _rectangular(self) -> ReplaceMapEdit:
        widths = {len(row) for row in self.values}
        if len(widths) != 1 or 0 in widths:
            raise ValueError("values must be a non-empty grid: every row the same length")
        if any(v < 0 for row in self.values for v in row) or not any(
            v > 0 for row in self.values for v in row
        ):
            raise ValueError("values must be non-negative with at least one positive weight")
        return self


def _edit_kind(value: Any) -> str:
    """An edit's ``kind``; a rectangle where none is given, so that ``--params
    generate.steering.bottom=20`` changes the default rectangle."""
    if isinstance(value, dict):
        return value.get("kind", "scale_rectangle")
    return getattr(value, "kind", "scale_rectangle")


class GenerateConfig(_Config):
    """Image grids rendered for every variant (``params:generate``)."""

    n_samples: PositiveInt = Field(64, description="prior samples, 8 per row")
    n_reconstructions: PositiveInt = Field(
        16, description="test images above their reconstructions"
    )
    n_interpolations: PositiveInt = Field(6, description="rows of the interpolation strip")
    interpolation_steps: int = Field(10, ge=2)
    n_attention_examples: PositiveInt = Field(
        8, description="test images shown beside their attention maps"
    )
    n_steered: PositiveInt = Field(
        8, description="prior samples shown under every steering edit (steering.png)"
    )
    steering: Annotated[
        Annotated[ScaleRectangleEdit, Tag("scale_rectangle")]
        | Annotated[ReplaceMapEdit, Tag("replace")],
        Discriminator(_edit_kind),
    ] = Field(
        default_factory=ScaleRectangleEdit,
        description="the attention edit of variants with a spatial map: a rectangle scaled "
        "(default: the top half, x8) or {kind: replace, values: [[0, 1], [0, 0]]}, any grid",
    )
    seed: int = 0


class RegistryConfig(_Config):
    """The MLflow model registry (``params:registry``)."""

    champion_metric: str = Field(
        "nll_iw",
        description="the test metric (a name of attn_pipeline.spec.metric_table.METRICS) whose "
        "best version of each registered model gets the alias `champion`",
    )

    @model_validator(mode="after")
    def _known_metric(self) -> RegistryConfig:
        if self.champion_metric not in METRICS:
            raise ValueError(
                f"registry.champion_metric '{self.champion_metric}' is not a test metric; "
                f"choose one of {sorted(METRICS)}"
            )
        return self


#: Parameter keys with another name, and the name to use: a file that still has one is
#: refused with this hint (an unknown key would otherwise be named without it).
RENAMED_KEYS = {"variants": "entries", "study.variants": "study.entries"}


def refuse_renamed(values: dict, prefix: str = "") -> None:
    """Raise ``ConfigError`` for a key of ``values`` that :data:`RENAMED_KEYS` renames."""
    for key in values:
        new = RENAMED_KEYS.get(prefix + key)
        if new is not None:
            raise ConfigError(
                f"the parameter '{prefix}{key}' is called '{new}': rename it (it lists study "
                "entries, each a '<name>.model' block; 'variant' names an architecture)"
            )


class StudyConfig(_Config):
    """The study (``params:study``, run by ``attn-study``): which entries, over which seeds. The
    lists are conf/base/parameters_study.yml's (no default lists here: one list, one place)."""

    entries: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    baselines: list[str] = Field(
        min_length=1,
        description="the entries every other is compared with, paired by seed; the first "
        "is the one the per-metric tables print differences from",
    )
    workers: PositiveInt | Literal["auto"] = Field(
        "auto",
        description="cells `attn-study` runs at once, each its own process; auto: one per "
        "CPU core, one thread each (at most 8 per GPU where CUDA is used)",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, values: Any) -> Any:
        if isinstance(values, dict):
            refuse_renamed(values, "study.")
        return values

    @model_validator(mode="after")
    def _baselines_and_distinct_seeds(self) -> StudyConfig:
        missing = [name for name in self.baselines if name not in self.entries]
        if missing or len(set(self.baselines)) != len(self.baselines):
            raise ValueError(
                f"study.baselines {self.baselines} must be distinct names of study.entries "
                f"{self.entries}: add them to study.entries, or set study.baselines to "
                "entries it has (for example `baselines: [none]`)"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"study.seeds must be distinct, got {self.seeds}")
        return self


#: The typed blocks of the parameters, each checked before any node runs.
TYPED_BLOCKS: dict[str, type[_Config]] = {
    "data_prep": DataPrepConfig,
    "feature_extractor": FeatureExtractorConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "generate": GenerateConfig,
    "registry": RegistryConfig,
    "study": StudyConfig,
}
#: The top-level parameters besides the entries (each a block with a ``model``).
PARAMETER_BLOCKS = ("dataset", "raw_data", "entries", *TYPED_BLOCKS)


def check_values(params: dict[str, Any]) -> None:
    """Every typed block and entry's ``model`` of ``params``, checked at once: a bad value is
    a :class:`ConfigError` (one paragraph, no traceback) naming each key, what it is and
    what is allowed."""
    blocks = {name: (TYPED_BLOCKS[name], params[name]) for name in TYPED_BLOCKS if name in params}
    for name, value in params.items():
        if isinstance(value, dict) and "model" in value:
            blocks[f"{name}.model"] = (ModelConfig, value["model"])
    problems = []
    for name, (config, value) in blocks.items():
        try:
            config.model_validate(value)
        except ValidationError as error:
            for each in error.errors(include_url=False):
                key = ".".join([name, *map(str, each["loc"])])
                message = each["msg"].removeprefix("Value error, ")
                if "got " not in message:
                    message += f" (got {each.get('input')!r})"
                problems.append(f"parameter '{key}': {message}")
    if problems:
        raise ConfigError("; ".join(problems) + ". Fix it in the parameters files or --params.")
