"""attn-steer: registered models load into a steerable generator; the page, driven in
headless Chromium, steers, shows the result, saves the grid and answers bad input with a
message."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from attn_pipeline.models import build_vae, make_checkpoint
from attn_pipeline.spec.config import ModelConfig
from attn_pipeline.steer import load_checkpoint_model
from attn_pipeline.steer.app import (
    Box,
    ModelError,
    SceneEdit,
    SceneRequest,
    SteerRequest,
    edit_of,
    edited_scene,
    scene_objects,
)
from tests.conftest import chromium, free_port, wait_until_answering

CANVAS = (1, 40, 40)
WHERE = ModelConfig(variant="where", latent_dim=4, glyph_size=28, attention_resolution=20)


def _checkpoint(path: Path, config: ModelConfig) -> Path:
    torch.manual_seed(0)
    model = build_vae(config, CANVAS)
    torch.save(make_checkpoint(config, CANVAS, model.state_dict()), path)
    return path


#: Run in a process of its own (no MLflow state shared with other tests): a toy `where`
#: generator (argv: store, WHERE as JSON, CANVAS as JSON) logged and registered as
#: `kedro run` does, then loaded back by attn-steer.
REGISTERED_ROUND_TRIP = """
import json, sys, mlflow, torch
from attn_pipeline.spec.config import ModelConfig
from attn_pipeline.models import ImageSampler, build_vae
from contextlib import nullcontext
from attn_pipeline.tracking.model_registry import register
from attn_pipeline.steer import load_registered_model
from attn_pipeline.steer.app import ModelError
mlflow.set_tracking_uri(sys.argv[1])
config = ModelConfig.model_validate_json(sys.argv[2])
torch.manual_seed(0)
model = build_vae(config, tuple(json.loads(sys.argv[3]))).eval()
with mlflow.start_run() as run:
    mlflow.log_params({f"model.{k}": v for k, v in config.model_dump().items()})
    sampler = ImageSampler(model.generator, latent_dim=model.latent_dim)
    register(sampler, run.info.run_id, "toy.where", {"entry": "toy"}, "toy", nullcontext)
mlflow.MlflowClient().set_registered_model_alias("toy.where", "champion", "1")
for reference in ("models:/toy.where/1", "models:/toy.where@champion"):
    loaded = load_registered_model(reference)
    z = torch.randn(3, model.latent_dim)
    with torch.no_grad():
        assert torch.allclose(loaded.vae.decode(z).logits, model.decode(z).logits), reference
    assert loaded.variant == "where" and loaded.map_size == 20
try:
    load_registered_model("models:/nope/1")
except ModelError as error:
    assert "no registered model models:/nope/1" in str(error), error
else:
    raise AssertionError("an unknown model loaded")
print("round trip ok")
"""


@pytest.mark.process
def test_a_registered_version_loads_as_the_generator_it_was(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable, "-c", REGISTERED_ROUND_TRIP, f"sqlite:///{tmp_path / 'mlflow.db'}",
            WHERE.model_dump_json(), json.dumps(CANVAS),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and "round trip ok" in out.stdout, out.stderr[-3000:]


def test_a_model_without_a_map_is_refused_by_name(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "none.pt", ModelConfig(latent_dim=4))
    with pytest.raises(ModelError, match="has no attention map to edit"):
        load_checkpoint_model(path)
    with pytest.raises(ModelError, match="no checkpoint at"):
        load_checkpoint_model(tmp_path / "missing.pt")


def test_move_is_offered_only_where_the_map_carries_position(tmp_path: Path) -> None:
    """`where`'s map carries the glyph's position: a box moves it. `spatial_gate`'s map
    weights the image in place: "move" would blank the rest, so it is refused, saying why."""
    box = Box(top=0, bottom=20, left=0, right=20)
    where = load_checkpoint_model(_checkpoint(tmp_path / "where.pt", WHERE))
    assert where.moves and edit_of(SteerRequest(kind="move", box=box), where)
    gate_config = ModelConfig(variant="spatial_gate", latent_dim=4)
    gate = load_checkpoint_model(_checkpoint(tmp_path / "gate.pt", gate_config))
    assert not gate.moves
    with pytest.raises(ModelError, match="does not carry the content's position"):
        edit_of(SteerRequest(kind="move", box=box), gate)
    assert edit_of(SteerRequest(kind="emphasise", box=box), gate)


def _drag(page, x0: int, y0: int, x1: int, y1: int) -> None:
    """Drag a box over the page's pad, in its pixels."""
    pad = page.locator("#pad").bounding_box()
    page.mouse.move(pad["x"] + x0, pad["y"] + y0)
    page.mouse.down()
    page.mouse.move(pad["x"] + x1, pad["y"] + y1, steps=5)
    page.mouse.up()


def _steer(page) -> str:
    """Press Steer and wait for a new result image; its data URL."""
    before = page.get_attribute("#result", "src")
    page.click("#steer")
    page.wait_for_function(
        "([old]) => document.getElementById('result').src && "
        "document.getElementById('result').src !== old",
        arg=[before or ""],
    )
    return page.get_attribute("#result", "src")


def _message_includes(page, text: str) -> None:
    page.wait_for_function(
        "([text]) => document.getElementById('message').textContent.includes(text)", arg=[text]
    )


def _load_others(page, gate: Path, none: Path) -> None:
    """Load models into the page: a map that gates (no "move", and why), an unknown name,
    a model without a map (each refused with its message)."""
    page.fill("#model", str(gate))  # a map that gates: no "move", and why
    page.click("#load")
    page.wait_for_function(
        "document.getElementById('description').textContent.includes('spatial_gate')"
    )
    assert page.is_disabled("input[value=move]")
    assert page.is_checked("input[value=emphasise]")
    assert "does not carry the content's position" in page.inner_text("#no-move")

    page.fill("#model", "models:/no.such.model/1")
    page.click("#load")
    page.wait_for_function(
        "document.getElementById('message').textContent.includes('no registered')"
    )
    page.fill("#model", str(none))
    page.click("#load")
    page.wait_for_function(
        "document.getElementById('message').textContent.includes('no attention map')"
    )


@contextmanager
def _page_for(model: Path, tmp_path: Path, out: Path) -> Iterator[Any]:
    """``attn-steer --model model`` in a process of its own, and a headless Chromium page
    on it; both stopped after."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("attn-steer")), "--model", str(model),
         "--port", str(port), "--out", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_answering(url, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(url)
            yield page
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.process
def test_the_page_steers_saves_and_explains_bad_input(tmp_path: Path) -> None:
    where = _checkpoint(tmp_path / "where.pt", WHERE)
    none = _checkpoint(tmp_path / "none.pt", ModelConfig(latent_dim=4))
    gate = _checkpoint(tmp_path / "gate.pt", ModelConfig(variant="spatial_gate", latent_dim=4))
    out = tmp_path / "saved"
    with _page_for(where, tmp_path, out) as page:
        page.wait_for_function("document.getElementById('description').textContent")
        assert "where, 40x40 images, 20x20 map" in page.inner_text("#description")
        assert page.is_checked("input[value=move]") and not page.is_visible("#no-move")

        page.click("#steer")  # no box yet
        _message_includes(page, "the box is empty")

        _drag(page, 10, 10, 130, 130)  # the top left quadrant of the 280-pixel pad
        # the box in the image's pixels (a pixel either way at the pad's edges)
        assert re.fullmatch(r"rows [12]-1[89], columns [12]-1[89]", page.inner_text("#box-text"))
        top_left = _steer(page)
        _drag(page, 150, 150, 270, 270)
        bottom_right = _steer(page)
        assert top_left.startswith("data:image/png;base64,") and top_left != bottom_right
        page.screenshot(path=str(tmp_path / "page.png"))

        page.click("#save")
        page.wait_for_function("document.getElementById('message').textContent.startsWith('saved')")
        saved = list(out.glob("steered_*.png"))
        assert len(saved) == 1 and saved[0].read_bytes()[:4] == b"\x89PNG"

        _load_others(page, gate, none)
        assert "Traceback" not in page.content()


SCENE = (1, 64, 64)
OBJECTS = ModelConfig(
    variant="objects", backbone="mlp", latent_dim=4, hidden_dim=32, glyph_size=28,
    attention_resolution=4,
)  # fmt: skip


def _objects_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_vae(OBJECTS, SCENE)
    torch.save(make_checkpoint(OBJECTS, SCENE, model.state_dict()), path)
    return path


def _scene_with_room(model) -> tuple[int, list[dict[str, int]], tuple[int, int]]:
    """A seed whose prior sample has two objects or more, its objects, and the centre of an
    empty cell whose glyph window meets no object's."""
    for seed in range(50):
        objects = scene_objects(model, edited_scene(model, SceneRequest(seed=seed)))
        taken = {o["cell"] for o in objects}
        for cell in range(16):
            row, col = min(max(16 * (cell // 4) + 8, 14), 50), min(max(16 * (cell % 4) + 8, 14), 50)
            apart = all(max(abs(o["row"] - row), abs(o["col"] - col)) >= 28 for o in objects)
            if len(objects) >= 2 and cell not in taken and apart:
                return seed, objects, (row, col)
    raise AssertionError("no prior sample with two objects and room")


def test_scene_edits_are_made_in_order_and_bad_ones_named(tmp_path: Path) -> None:
    model = load_checkpoint_model(_objects_checkpoint(tmp_path / "objects.pt"))
    assert model.moves and model.map_size == 4
    seed, objects, (row, col) = _scene_with_room(model)
    first, second = objects[0], objects[1]
    edits = [SceneEdit(kind="move", cell=first["cell"], row=row, col=col)]
    moved = scene_objects(model, edited_scene(model, SceneRequest(seed=seed, edits=edits)))
    assert {"cell": 4 * (row // 16) + col // 16, "row": row, "col": col} in moved
    assert first not in moved and second in moved and len(moved) == len(objects)
    edits.append(SceneEdit(kind="remove", cell=second["cell"]))
    assert len(scene_objects(model, edited_scene(model, SceneRequest(seed=seed, edits=edits)))) == (
        len(objects) - 1
    )
    bad = [
        (SceneEdit(kind="remove", cell=first["cell"]), "no object in that cell"),
        (SceneEdit(kind="move", cell=second["cell"], row=80, col=3), "outside the 64x64 image"),
        (SceneEdit(kind="add", row=second["row"], col=second["col"]), "holds an object already"),
    ]
    for edit, message in bad:
        with pytest.raises(ModelError, match=message):
            edited_scene(model, SceneRequest(seed=seed, edits=[*edits[:1], edit]))


def _png_pixels(page) -> torch.Tensor:
    """The scene the page's pad shows, from its data URL, as ``(64, 64)`` grey levels."""
    from PIL import Image  # noqa: PLC0415

    url = page.evaluate("document.getElementById('pad').background.src")
    raw = base64.b64decode(url.split(",", 1)[1])
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(raw)).convert("L")))


@pytest.mark.process
def test_the_page_moves_one_digit_and_only_that_one(tmp_path: Path) -> None:
    """An objects model on the page: its sample's objects in boxes; dragging one box moves
    that digit alone (its cell, its centre; every pixel outside its old and new windows as
    it was), and a bad edit is answered with a message."""
    path = _objects_checkpoint(tmp_path / "objects.pt")
    seed, objects, (row, col) = _scene_with_room(load_checkpoint_model(path))
    with _page_for(path, tmp_path, tmp_path / "saved") as page:
        page.wait_for_function("document.getElementById('objects-text').textContent")
        assert "objects, 64x64 images, 4x4 map" in page.inner_text("#description")
        page.fill("#scene-seed", str(seed))
        page.dispatch_event("#scene-seed", "change")
        listed = ", ".join(f"cell {o['cell']} at ({o['row']}, {o['col']})" for o in objects)
        page.wait_for_function(
            "([text]) => document.getElementById('objects-text').textContent.endsWith(text)",
            arg=[listed.replace(", cell", "; cell")],
        )
        before = _png_pixels(page)
        scale = page.locator("#pad").bounding_box()["width"] / 64
        first = objects[0]
        _drag(page, (first["col"] + 0.5) * scale, (first["row"] + 0.5) * scale,
              (col + 0.5) * scale, (row + 0.5) * scale)  # fmt: skip
        moved = f"cell {4 * (row // 16) + col // 16} at ({row}, {col})"
        page.wait_for_function(
            "([text]) => document.getElementById('objects-text').textContent.includes(text)",
            arg=[moved],
        )
        page.wait_for_function("document.getElementById('pad').background.complete")
        text = page.inner_text("#objects-text")
        assert f"cell {first['cell']} at" not in text
        for other in objects[1:]:
            assert f"cell {other['cell']} at ({other['row']}, {other['col']})" in text
        after = _png_pixels(page)
        outside = torch.ones(64, 64, dtype=torch.bool)
        for centre in ((first["row"], first["col"]), (row, col)):
            outside[max(centre[0] - 14, 0) : centre[0] + 14,
                    max(centre[1] - 14, 0) : centre[1] + 14] = False  # fmt: skip
        assert torch.equal(after[outside], before[outside])
        assert not torch.equal(after, before)
        page.screenshot(path=str(tmp_path / "scene.png"))

        page.click("#swap")  # nothing selected
        _message_includes(page, "select two objects to swap")
        assert "Traceback" not in page.content()
