"""``attn-steer``: steer a trained generator by hand, on a local web page.

The page shows prior samples beside their attention maps; the user drags a box over an
image (or paints the map's cells) and sees the same samples decoded with the edited map
beside the unsteered ones; a button saves the grid. For an ``objects`` model the page shows
one prior sample's objects, each in its box: drag one to move it, select one to remove it
or to swap it with another, click an empty place to add one, and the same sample is drawn
again after every edit. The model is a registered one (by
default ``models:/attn_pipeline.<dataset>.<entry>@champion``, any ``models:/name/version``
or ``@alias``) or a checkpoint file. Registered versions hold the generator alone, exported
(``z -> images``); its weights are loaded into the generator the version's run describes
(its ``model.*`` parameters), so edits reach the map as in ``kedro run``.

Bad input (an empty box, a model without a map, an unknown model) is answered with a
message the page shows, never a traceback.
"""

from __future__ import annotations

import argparse
import ast
import base64
import io
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow
import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from matplotlib.figure import Figure
from pydantic import BaseModel, Field, ValidationError
from torchvision.transforms.functional import to_pil_image

from attn_pipeline.models import VAE, build_vae, scene_edits
from attn_pipeline.models.checkpoint import load_checkpoint
from attn_pipeline.models.objects import WHAT, CellLayout
from attn_pipeline.models.scene_edits import object_centres, present_cells
from attn_pipeline.models.steering import MoveToRectangle, ReplaceMap, ScaleRectangle
from attn_pipeline.spec.config import ModelConfig
from attn_pipeline.spec.variants import variant_spec
from attn_pipeline.tracking.model_registry import registered_model_name

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
#: The edit factors of the steering benchmark's emphasis and suppression.
EMPHASIS, SUPPRESSION = 8.0, 0.05


class ModelError(ValueError):
    """A model that cannot be loaded or steered; the message says why and what to do."""


@dataclass
class SteerableModel:
    """A generator with an editable map, and what the page says of it."""

    vae: VAE
    name: str
    variant: str

    @property
    def image_size(self) -> int:
        return self.vae.image_shape[-1]

    @property
    def layout(self) -> CellLayout | None:
        """The grid of an ``objects`` model (its map: one object per cell); else None."""
        objects = self.vae.generator.objects
        return None if objects is None else objects.layout

    @property
    def map_size(self) -> int:
        if self.layout is not None:
            return self.layout.cells
        return self.vae.generator.spatial_map(torch.zeros(1, self.vae.latent_dim)).shape[-1]

    @property
    def moves(self) -> bool:
        """Whether its map carries the content's position, so that "move into the box" moves
        it (``where``, ``objects``); a map that gates or feeds the decoder only re-weights in
        place."""
        return self.layout is not None or variant_spec(self.variant).spatial_map == "position"


#: Why "move" is not offered for a map that does not carry position.
NO_MOVE = (
    "this model's map weights the image where it is drawn (it gates or feeds the decoder); "
    "it does not carry the content's position, so moving the map would blank the rest of "
    "the image instead of moving the content: use emphasise, suppress or paint, or a model "
    "of the variant where"
)


def _steerable(vae: VAE, name: str, variant: str) -> SteerableModel:
    if vae.generator.spatial_map is None and vae.generator.objects is None:
        raise ModelError(
            f"{name} (variant '{variant}') has no attention map to edit: choose a model of "
            "a variant with a map (spatial, spatial_gate, where, objects)"
        )
    return SteerableModel(vae.eval(), name, variant)


def load_checkpoint_model(path: Path) -> SteerableModel:
    """A model from a checkpoint file (``data/06_models/<dataset>/<entry>/model.pt``)."""
    if not path.is_file():
        raise ModelError(f"no checkpoint at {path}: train it first (`kedro run`)")
    vae, config = load_checkpoint(torch.load(path, map_location="cpu", weights_only=True))
    return _steerable(vae, str(path), config.variant)


def _param_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a plain string: a variant's name, a target


def load_registered_model(uri: str) -> SteerableModel:
    """A registered version (``models:/name/version`` or ``models:/name@alias``): its
    exported generator's weights in the generator its run's ``model.*`` parameters build."""
    client = mlflow.MlflowClient()
    reference = uri.removeprefix("models:/")
    name, _, version = reference.partition("/")
    name, _, alias = name.partition("@")
    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
        sampler = mlflow.pytorch.load_model(uri)
    except mlflow.exceptions.MlflowException as error:
        raise ModelError(
            f"no registered model {uri} on {mlflow.get_tracking_uri()}: train one "
            "(`kedro run`), or give an existing models:/name/version"
        ) from error
    params = client.get_run(found.run_id).data.params
    values = {
        key.removeprefix("model."): _param_value(value)
        for key, value in params.items()
        # runs that logged the images' size in the model block: the graph says it
        if key.startswith("model.") and key not in ("model.image_channels", "model.image_size")
    }
    try:
        config = ModelConfig.model_validate(values)
    except ValidationError as error:
        raise ModelError(
            f"{uri}: its run's model parameters do not build a model ({error})"
        ) from None
    # the version's signature: z (-1, latent dims) in, images (-1, C, H, W) out
    signature = mlflow.models.get_model_info(uri).signature
    image_shape = tuple(signature.outputs.inputs[0].shape[1:])
    vae = build_vae(config, image_shape)
    vae.generator.load_state_dict(
        {key.removeprefix("generator."): value for key, value in sampler.state_dict().items()}
    )
    return _steerable(vae, f"{name} version {found.version}", config.variant)


class Box(BaseModel):
    """A pixel rectangle ``[top, bottom) x [left, right)`` of the image."""

    top: int = Field(ge=0)
    bottom: int = Field(ge=0)
    left: int = Field(ge=0)
    right: int = Field(ge=0)


class SteerRequest(BaseModel):
    """What the page asks for: samples (``seed``, ``n``) and one edit of their maps."""

    seed: int = 0
    n: int = Field(8, ge=1, le=32)
    kind: Literal["move", "emphasise", "suppress", "paint"] = "move"
    box: Box | None = None
    cells: list[list[float]] | None = None  # kind paint: the map's new weights


class SceneEdit(BaseModel):
    """One edit of a scene's objects (``objects`` models): move the object of ``cell`` to
    be centred at ``row, col``; remove it; add one centred at ``row, col`` (a fresh
    appearance, or that of the object of ``cell``); swap the appearances of ``cell`` and
    ``other``."""

    kind: Literal["move", "remove", "add", "swap"]
    cell: int | None = Field(None, ge=0)
    other: int | None = Field(None, ge=0)
    row: int | None = None
    col: int | None = None


class SceneRequest(BaseModel):
    """A prior sample (``seed``) and the edits made to it, in order."""

    seed: int = 0
    edits: list[SceneEdit] = Field(default_factory=list, max_length=100)


def _object_at(layout: CellLayout, z: torch.Tensor, cell: int | None, what: str) -> int:
    if cell is None or cell >= layout.cells**2 or not bool(present_cells(layout, z)[0, cell]):
        raise ModelError(f"{what}: no object in that cell; pick one of the scene's objects")
    return cell


def _centre(layout: CellLayout, edit: SceneEdit) -> torch.Tensor:
    if edit.row is None or edit.col is None:
        raise ModelError(f"{edit.kind}: say where (row and col, in pixels)")
    if not (0 <= edit.row < layout.canvas and 0 <= edit.col < layout.canvas):
        raise ModelError(
            f"{edit.kind}: ({edit.row}, {edit.col}) is outside the "
            f"{layout.canvas}x{layout.canvas} image: place it inside"
        )
    return torch.tensor([[float(edit.row), float(edit.col)]])


def edited_scene(model: SteerableModel, request: SceneRequest) -> torch.Tensor:
    """The code ``(1, D)`` of the prior sample ``request.seed`` after ``request.edits``
    (:mod:`attn_pipeline.models.scene_edits`); a ``ModelError`` names an edit that cannot be
    made (no object there, a cell taken)."""
    layout = model.layout
    if layout is None:
        raise ModelError(f"{model.name} is not an objects model: its edits are of a map")
    z = torch.randn(1, model.vae.latent_dim, generator=torch.Generator().manual_seed(request.seed))
    for number, edit in enumerate(request.edits, start=1):
        try:
            if edit.kind == "move":
                cell = _object_at(layout, z, edit.cell, "move")
                z = scene_edits.move(layout, z, cell, _centre(layout, edit))
            elif edit.kind == "remove":
                z = scene_edits.remove(layout, z, _object_at(layout, z, edit.cell, "remove"))
            elif edit.kind == "add":
                if edit.cell is None:  # a fresh appearance, the same for the same edit
                    noise = torch.Generator().manual_seed(request.seed * 1000 + number)
                    what = torch.randn(1, layout.what, generator=noise)
                else:
                    what = layout.split(z)[:, _object_at(layout, z, edit.cell, "add"), WHAT]
                z = scene_edits.add(layout, z, _centre(layout, edit), what)
            else:
                first = _object_at(layout, z, edit.cell, "swap")
                z = scene_edits.swap(layout, z, first, _object_at(layout, z, edit.other, "swap"))
        except ValueError as error:  # a box whose cell holds another object
            raise ModelError(f"{edit.kind}: {error}") from None
    return z


def scene_objects(model: SteerableModel, z: torch.Tensor) -> list[dict[str, int]]:
    """The objects of the scene ``z (1, D)``: each one's cell and centre (whole pixels)."""
    layout = model.layout
    present = present_cells(layout, z)[0]
    centres = object_centres(layout, z)[0]
    return [
        {"cell": cell, "row": int(centres[cell, 0]), "col": int(centres[cell, 1])}
        for cell in range(layout.cells**2)
        if bool(present[cell])
    ]


def _data_url(image: torch.Tensor) -> str:
    buffer = io.BytesIO()
    to_pil_image(image.clamp(0, 1)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def edit_of(request: SteerRequest, model: SteerableModel):
    """The map edit a request describes, or a ``ModelError`` that says what is wrong."""
    size = model.image_size
    if request.kind == "paint":
        if not request.cells or not any(v > 0 for row in request.cells for v in row):
            raise ModelError("the painted map is empty: paint at least one cell")
        return ReplaceMap(values=tuple(tuple(row) for row in request.cells))
    box = request.box
    if box is None or box.bottom <= box.top or box.right <= box.left:
        raise ModelError("the box is empty: drag a box over the image first")
    if max(box.bottom, box.right) > size:
        raise ModelError(f"the box reaches outside the {size}x{size} image: draw it inside")
    bounds = box.model_dump()
    if request.kind == "move":
        if not model.moves:
            raise ModelError(NO_MOVE)
        return MoveToRectangle(**bounds, image_size=size)
    factor = EMPHASIS if request.kind == "emphasise" else SUPPRESSION
    return ScaleRectangle(**bounds, factor=factor, image_size=size)


@torch.no_grad()
def steer_figure(model: SteerableModel, request: SteerRequest) -> Figure:
    """Rows: the unsteered samples, their maps, the steered samples, their maps."""
    edit = edit_of(request, model)
    z = torch.randn(
        request.n, model.vae.latent_dim, generator=torch.Generator().manual_seed(request.seed)
    )
    try:
        unsteered, steered = model.vae.decode(z), model.vae.decode(z, edit)
    except ValueError as error:  # an edit that covers no cell of the map
        raise ModelError(str(error)) from None
    rows = [
        ("unsteered", torch.sigmoid(unsteered.logits), "gray"),
        ("its map", unsteered.attention["spatial"], "inferno"),
        ("steered", torch.sigmoid(steered.logits), "gray"),
        ("edited map", steered.attention["spatial"], "inferno"),
    ]
    figure = Figure(figsize=(1.1 * request.n + 1, 4.6), layout="constrained")
    axes = figure.subplots(len(rows), request.n, squeeze=False)
    for r, (label, values, cmap) in enumerate(rows):
        for c in range(request.n):
            picture = values[c].permute(1, 2, 0).squeeze(-1)  # (H, W) or (H, W, 3)
            axes[r, c].imshow(picture.clamp(0, 1) if cmap == "gray" else picture, cmap=cmap)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    figure.suptitle(f"{model.name}: {request.kind}", fontsize=8)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def create_app(model: SteerableModel | None, out_dir: Path, load=None) -> FastAPI:
    """The page and its API. ``load(uri_or_path) -> SteerableModel`` serves the page's
    model field; ``model`` is the one shown first (None: the page asks for one)."""
    app = FastAPI(title="attn-steer")
    state: dict[str, Any] = {"model": model, "last": None}

    def current() -> SteerableModel:
        if state["model"] is None:
            raise HTTPException(400, "no model is loaded: enter a model and press Load")
        return state["model"]

    def answered(work):
        try:
            return work()
        except ModelError as error:
            raise HTTPException(400, str(error)) from None

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/model")
    def describe() -> dict[str, Any]:
        m = current()
        return {"name": m.name, "variant": m.variant, "image_size": m.image_size,
                "map_size": m.map_size, "moves": m.moves,
                "no_move": None if m.moves else NO_MOVE,
                "objects": m.layout is not None,
                "glyph": None if m.layout is None else m.layout.glyph}  # fmt: skip

    @app.post("/api/scene")
    def scene(request: SceneRequest) -> dict[str, Any]:
        """The prior sample ``seed`` drawn unedited and after the edits, with its objects."""
        m = current()
        z = answered(lambda: edited_scene(m, request))
        unedited = answered(lambda: edited_scene(m, SceneRequest(seed=request.seed)))
        with torch.no_grad():
            drawn = torch.sigmoid(m.vae.decode(torch.cat([unedited, z])).logits)
        return {"before": _data_url(drawn[0]), "image": _data_url(drawn[1]),
                "objects": scene_objects(m, z)}  # fmt: skip

    @app.post("/api/model")
    def load_model(body: dict[str, str]) -> dict[str, Any]:
        if load is None:
            raise HTTPException(400, "this page serves one model")
        state["model"] = answered(lambda: load(body.get("model", "").strip()))
        return describe()

    @app.get("/api/preview")
    def preview(seed: int = 0) -> dict[str, str]:
        """The first sample of ``seed``, unsteered: the image the page's box is drawn on."""
        m = current()
        z = torch.randn(1, m.vae.latent_dim, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            image = torch.sigmoid(m.vae.decode(z).logits)[0]
        return {"image": _data_url(image)}

    @app.post("/api/steer")
    def steer(request: SteerRequest) -> dict[str, str]:
        png = answered(lambda: _png(steer_figure(current(), request)))
        state["last"] = png
        return {"image": "data:image/png;base64," + base64.b64encode(png).decode()}

    @app.post("/api/save")
    def save() -> dict[str, str]:
        if state["last"] is None:
            raise HTTPException(400, "nothing to save yet: steer first")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"steered_{time.strftime('%Y%m%d_%H%M%S')}.png"
        path.write_bytes(state["last"])
        return {"saved": str(path)}

    return app


def _loader(text: str) -> SteerableModel:
    if not text:
        raise ModelError("enter a model: models:/name/version, models:/name@alias or a .pt file")
    if text.startswith("models:/"):
        return load_registered_model(text)
    return load_checkpoint_model(Path(text))


def main(argv: list[str] | None = None) -> None:
    """``attn-steer``: serve the page for a registered model (default: the champion of the
    data set's entry) or a checkpoint file."""
    import uvicorn  # noqa: PLC0415 (only the command needs the server)
    from kedro.config import OmegaConfigLoader  # noqa: PLC0415

    from attn_pipeline.spec.parameters import CONFIG_LOADER_ARGS  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="attn-steer", description=main.__doc__)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--entry", default="spatial_gate")
    parser.add_argument("--model", help="models:/name/version, models:/name@alias or a .pt file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--out",
        type=Path,
        help="where grids are saved (default: data/08_reporting/<dataset>/steer)",
    )
    args = parser.parse_args(argv)
    if not mlflow.is_tracking_uri_set() and Path("conf", "base").is_dir():
        # the project's store, as mlflow.yml names it (MLFLOW_TRACKING_URI wins there too)
        mlflow_conf = OmegaConfigLoader("conf", **CONFIG_LOADER_ARGS)["mlflow"]
        mlflow.set_tracking_uri(mlflow_conf["server"]["mlflow_tracking_uri"])
    uri = args.model or f"models:/{registered_model_name(args.dataset, args.entry)}@champion"
    try:
        model = _loader(uri)
    except ModelError as error:
        model = None  # the page says so and offers the model field
        sys.stderr.write(f"attn-steer: {error}\n")
    out = args.out or Path("data") / "08_reporting" / args.dataset / "steer"
    sys.stderr.write(f"attn-steer: http://{args.host}:{args.port}  (Ctrl-C stops it)\n")
    uvicorn.run(
        create_app(model, out, load=_loader), host=args.host, port=args.port, log_level="warning"
    )
