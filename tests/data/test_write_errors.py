"""A full disk: the write fails with a message that names the file and the cause, no
partial file is left behind, and the previous version is kept. On a real, small tmpfs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from attn_pipeline.data.saved_state import ResultCache
from attn_pipeline.data.torch_files import TorchDataset, WriteError


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system of its own (mounting needs root, as in CI)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_names_the_file_and_keeps_the_previous_version(small_disk: Path) -> None:
    path = small_disk / "06_models" / "model.pt"
    dataset = TorchDataset(filepath=str(path))
    small = {"weights": torch.arange(10.0)}
    dataset.save(small)
    too_big = {"weights": torch.zeros(200_000)}  # 800 KB: more than the disk holds
    with pytest.raises(WriteError, match=rf"^No space left on device while writing {path}") as e:
        dataset.save(too_big)
    assert "inline_container" not in str(e.value)  # torch's C++ words say nothing to a user
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no .partial
    assert torch.equal(dataset.load()["weights"], small["weights"])


def test_a_full_disk_while_an_evaluation_is_stored(small_disk: Path) -> None:
    (small_disk / "filler").write_bytes(b"\0" * (250 * 1024))  # the disk nearly full
    cache = ResultCache(small_disk / "evaluations")
    with pytest.raises(WriteError, match="No space left on device.* while writing"):
        cache.put({"weights": "abc"}, {"test_metrics": {"nll": 1.0}, "pad": "x" * 20_000})
    assert not list((small_disk / "evaluations").glob("*.partial"))


def test_an_unchanged_file_is_not_written_again(tmp_path: Path) -> None:
    path = tmp_path / "extractor.pt"
    dataset = TorchDataset(filepath=str(path), rewrite_unchanged=False)
    state = {"hash": "abc", "state_dict": {"w": torch.ones(3)}}
    dataset.save(state)
    path.chmod(0o444)
    stamp = path.stat().st_mtime_ns
    dataset.save(dataset.load())  # the same bytes: left alone (read-only is no matter)
    assert path.stat().st_mtime_ns == stamp
    path.chmod(0o644)
    dataset.save({**state, "hash": "def"})
    assert dataset.load()["hash"] == "def"
