"""Every command the docs show works as written.

Each ``bash`` and ``python`` code block of README.md and docs/**/*.md carries a marker on
the line before it, which says how it is checked:

- ``<!-- doc-test: run -->``: run as written (``bash -euo pipefail`` or ``python``), in
  document order, in one scratch copy of the project whose parameters hold a tiny
  budget, with the project's environment first on PATH (as ``source .venv/bin/activate``
  does);
- ``<!-- doc-test: serve URL -->``: a server; started in the background, it must answer
  ``URL`` and keep running (the blocks after it talk to it), then is stopped;
- ``<!-- doc-test: skip REASON -->``: not run here, for the reason given;
- ``<!-- doc-test: add PATH [after TEXT] -->``: a step of a guide that adds the block to a
  file (tests/project/test_extending.py follows them), not a command.

A path the docs write for the reader's own (``/path/to/mnist``) is replaced by the real
one. A block without a marker fails :func:`test_every_command_block_is_marked`, so a command
added to the docs is either checked or says why not.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from attn_pipeline.data.fetch import ENV_VAR
from tests.conftest import PROJECT_ROOT

DOC_FILES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("**/*.md"))]
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console", "python"}
MARKER = re.compile(r"<!--\s*doc-test:\s*(run|serve|skip|add)\b\s*(.*?)\s*-->")
FENCE = re.compile(r"^(```+)\s*([\w-]*)\s*$")
#: A Python warning as the interpreter prints it, or as Kedro's logging passes it on.
WARNING_LINE = re.compile(r"^\S+:\d+: \w*Warning: .*|.*\bpy\.warnings\b.*", re.MULTILINE)

#: The budget of the scratch project, in its base parameters (so that every environment
#: has it: `--env fashion_mnist` reads no conf/local): every documented command in seconds.
TINY_BUDGET = {
    "data_prep": {"subset_size": 1200, "test_subset_size": 300},
    "train": {"epochs": 1, "batch_size": 100},
    "evaluate": {
        "n_samples": 200,
        "nll_samples": 5,
        "nll_images": 50,
        "steer_samples": 50,
        "kid_subsets": 5,
        "kid_subset_size": 50,
    },
    "generate": {"n_samples": 16, "n_reconstructions": 8, "n_interpolations": 2},
    "study": {"entries": ["none", "spatial_gate"], "seeds": [0], "baselines": ["none"]},
}


def _with_tiny_budget(parameters_file: Path) -> None:
    """Overwrite the values of ``TINY_BUDGET`` where ``parameters_file`` sets its blocks."""
    params = yaml.safe_load(parameters_file.read_text()) or {}
    for key, values in TINY_BUDGET.items():
        if key in params:
            params[key] = {**params[key], **values}
    parameters_file.write_text(yaml.safe_dump(params, sort_keys=False))


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    mode: str | None  # run, serve, skip; None: no marker
    argument: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(PROJECT_ROOT)}:{self.line}"


def command_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` in a command language, with their markers."""
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith(fence.group(1)))
        language = fence.group(2).lower()
        if language in COMMAND_LANGUAGES:
            previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marker = MARKER.search(previous)
            blocks.append(
                Block(
                    path=path,
                    line=index + 1,
                    language=language,
                    code="\n".join(lines[index + 1 : end]) + "\n",
                    mode=marker.group(1) if marker else None,
                    argument=marker.group(2) if marker else "",
                )
            )
        index = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in command_blocks(path)]
CHECKED = [block for block in ALL_BLOCKS if block.mode in ("run", "serve")]
#: The README's main command: the pages below use what it made (a registered model, runs).
MAIN_RUN = next(b for b in CHECKED if b.path.name == "README.md" and "make run" in b.code)
NEEDS_MAIN_RUN = {PROJECT_ROOT / "docs" / "tracking.md"}


def prerequisites(block: Block) -> list[Block]:
    """What a block needs run before it, so that any selection runs alone (``pytest -k``):
    the main run for the pages that read its results, and the server a block right after a
    `serve` block talks to. The raw data sets are fetched by the project's fixture."""
    needs = [MAIN_RUN] if block.path in NEEDS_MAIN_RUN else []
    same_page = [b for b in CHECKED if b.path == block.path and b.line < block.line]
    if block.mode == "run" and same_page and same_page[-1].mode == "serve":
        needs.append(same_page[-1])
    return needs


def test_every_command_block_is_marked() -> None:
    unmarked = [block.id for block in ALL_BLOCKS if block.mode is None]
    assert not unmarked, f"code blocks without a <!-- doc-test: ... --> marker: {unmarked}"
    unexplained = [block.id for block in ALL_BLOCKS if block.mode == "skip" and not block.argument]
    assert not unexplained, f"skipped blocks that do not say why: {unexplained}"
    assert CHECKED, "no documented command is checked"


def test_the_markers_are_read(tmp_path: Path) -> None:
    """The parser itself, on a file written here: a marked, a skipped, an unmarked block."""
    text = (
        "<!-- doc-test: run -->\n```bash\necho a\n```\n\n"
        "<!-- doc-test: skip needs a GPU -->\n\n```python\nprint(1)\n```\n"
        "```bash\necho c\n```\n```\nnot a command\n```\n"
    )
    path = tmp_path / "probe.md"
    path.write_text(text)
    blocks = command_blocks(path)
    assert [(b.line, b.language, b.mode, b.argument, b.code) for b in blocks] == [
        (2, "bash", "run", "", "echo a\n"),
        (8, "python", "skip", "needs a GPU", "print(1)\n"),
        (11, "bash", None, "", "echo c\n"),
    ]


def _datasets_folder() -> Path | None:
    """The folder holding the official IDX files of both data sets (CI names the MNIST one
    in ATTN_PIPELINE_DATA_DIR; Fashion-MNIST is beside it)."""
    named = os.environ.get(ENV_VAR)
    if not named:
        return None
    parent = Path(named).resolve().parent
    both = all((parent / name).is_dir() for name in ("mnist", "fashion_mnist"))
    return parent if both else None


@pytest.fixture(scope="module")
def scratch_project(tmp_path_factory: pytest.TempPathFactory):
    """A copy of the project as a fresh clone has it, using this test run's environment as
    its `.venv`, with a tiny budget in its base parameters; servers started by blocks are stopped
    at the end."""
    datasets = _datasets_folder()
    if datasets is None:
        pytest.skip(f"the documented commands fetch the real data sets: set {ENV_VAR}")
    root = tmp_path_factory.mktemp("clone")
    for name in ("pyproject.toml", "requirements.lock", "Makefile", ".telemetry", "README.md"):
        shutil.copy(PROJECT_ROOT / name, root / name)
        # older than the environment's install stamp: make installs nothing again
        os.utime(root / name, (0, 0))
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("*.yml.*"))
    for leftover in (root / "conf" / "local").glob("*.yml"):
        leftover.unlink()
    for parameters_file in (root / "conf" / "base").glob("parameters*.yml"):
        _with_tiny_budget(parameters_file)
    (root / "src").mkdir()  # the package is this environment's
    (root / ".venv").symlink_to(Path(sys.prefix))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "KEDRO_ENV", "VIRTUAL_ENV")
    }
    env |= {
        "PATH": f"{root / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "KEDRO_DISABLE_TELEMETRY": "1",
        ENV_VAR: str(datasets),
    }
    for name in ("mnist", "fashion_mnist"):  # as getting-started's first block does
        fetch = [str(root / ".venv" / "bin" / "attn-fetch-data"), name]
        subprocess.run([*fetch, "--local-dir", str(datasets / name)], cwd=root, env=env, check=True)
    servers: list[subprocess.Popen] = []
    yield Scratch(root, env, servers, datasets, set())
    for server in servers:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
    for server in servers:
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@dataclass
class Scratch:
    root: Path
    env: dict[str, str]
    servers: list[subprocess.Popen]
    datasets: Path
    done: set[str]  # the blocks run so far, by id


def _command(block: Block, datasets: Path) -> list[str]:
    code = block.code.replace("/path/to/mnist", str(datasets / "mnist"))
    if block.language == "python":
        return [sys.executable, "-c", code]
    return ["bash", "-euo", "pipefail", "-c", code]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
            return response.status < 500
    except urllib.error.HTTPError as error:
        return error.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _worker_group(block: Block) -> str:
    """The blocks that use the main run's results share one worker (and its scratch
    project, make test: --dist loadgroup); the others go to another."""
    after_main = block is MAIN_RUN or MAIN_RUN in prerequisites(block)
    return "documented_commands_after_the_main_run" if after_main else "documented_commands"


@pytest.mark.process
@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=pytest.mark.xdist_group(_worker_group(b)), id=b.id) for b in CHECKED],
)
def test_the_documented_command_works(block: Block, scratch_project: Scratch) -> None:
    for needed in prerequisites(block):
        if needed.id not in scratch_project.done:
            _run_block(needed, scratch_project)
    _run_block(block, scratch_project)


def test_any_selection_of_blocks_gets_what_it_needs() -> None:
    by_id = {block.id: block for block in CHECKED}
    curl = next(b for b in CHECKED if "/invocations" in b.code)
    assert [b.id for b in prerequisites(curl)] == [
        MAIN_RUN.id,
        next(b.id for b in CHECKED if "make serve" in b.code),
    ]
    assert prerequisites(by_id[MAIN_RUN.id]) == []


def _run_block(block: Block, scratch: Scratch) -> None:
    root, env, servers, datasets = scratch.root, scratch.env, scratch.servers, scratch.datasets
    scratch.done.add(block.id)
    if block.mode == "serve":
        log = open(root / f"server_{block.line}.log", "w")  # noqa: SIM115 (the server's)
        server = subprocess.Popen(
            _command(block, datasets),
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        servers.append(server)
        deadline = time.monotonic() + 600  # a safety net against a hang, not a line-up
        while not _answers(block.argument):
            assert server.poll() is None, (root / f"server_{block.line}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"{block.argument} never answered"
            time.sleep(1)
        return
    out = subprocess.run(
        _command(block, datasets),
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, (
        f"{block.id}\n{block.code}\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
    )
    # a documented command is quiet: a known warning is fixed at its cause, or filtered where
    # the cause is upstream (attn_pipeline/__init__.py)
    warned = WARNING_LINE.findall(out.stdout + out.stderr)
    assert not warned, f"{block.id} prints warnings: {warned}"
