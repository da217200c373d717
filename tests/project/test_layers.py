"""The package's folders are layers: a module imports only from its own folder or a layer
below it, so the folders' imports have no cycle (docs/how-it-works.md shows the tree)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "src" / "attn_pipeline"

#: Lowest first. Kedro's own entry points (settings, hooks, pipeline_registry) sit on top.
LAYERS = (
    {"data"},
    {"spec"},
    {"models"},
    {"metrics"},
    {"training", "tracking"},
    {"pipelines"},
    {"study", "steer"},
    {"settings", "hooks", "pipeline_registry", "__main__", "__init__"},
)


def _folder(module: str) -> str:
    """``attn_pipeline.spec.config`` -> ``spec``; a top-level module is its own folder."""
    return module.split(".")[1] if "." in module else "__init__"


def _imports(path: Path) -> set[str]:
    """The project modules ``path`` imports (``attn_pipeline.x.y``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "attn_pipeline":  # from attn_pipeline import models
                names = [f"attn_pipeline.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
            found.update(n for n in names if n.startswith("attn_pipeline."))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("attn_pipeline."))
    return found


def _rank(folder: str) -> int:
    (rank,) = [i for i, layer in enumerate(LAYERS) if folder in layer]
    return rank


def test_every_folder_has_a_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    placed = set().union(*LAYERS)
    assert folders | modules <= placed, f"give {sorted((folders | modules) - placed)} a layer"


def test_no_module_imports_from_a_layer_above_or_beside_its_own() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        here = _folder(".".join(relative.parts))
        for imported in _imports(path):
            there = _folder(imported)
            # a folder beside its own (training and tracking) would allow a cycle
            beside = _rank(there) == _rank(here) != len(LAYERS) - 1 and there != here
            if _rank(there) > _rank(here) or beside:
                upward.append(f"{relative}: {imported}")
    assert not upward, "imports from a layer above or beside:\n" + "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from attn_pipeline import models\nfrom attn_pipeline.study.runner import main\n"
    )
    assert _imports(module) == {"attn_pipeline.models", "attn_pipeline.study.runner"}
    assert _rank(_folder("attn_pipeline.study.runner")) > _rank("spec")
