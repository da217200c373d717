"""attn-fetch-data: verified copies from a local folder; fast, clear failure offline."""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
from pathlib import Path

import pytest

from attn_pipeline.data import fetch as fetch_data
from attn_pipeline.data.fetch import DataSource, FetchError, RawFile, fetch
from attn_pipeline.data.idx import IDXDataset, IDXFormatError
from tests.conftest import RAW_NAMES, write_raw_dataset


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def tiny_source(monkeypatch: pytest.MonkeyPatch, raw_folder: Path) -> Path:
    """Register a data set 'tiny' whose checksums are those of the synthetic files."""
    files = []
    for name in RAW_NAMES.values():
        data = (raw_folder / name).read_bytes()
        files.append(RawFile(name, gz_md5="0" * 32, raw_md5=_md5(gzip.decompress(data))))
    source = DataSource(files=tuple(files), mirrors=("http://127.0.0.1:9/",), aliases=("tiny",))
    monkeypatch.setitem(fetch_data.SOURCES, "tiny", source)
    monkeypatch.setattr(fetch_data, "DEBIAN_ROOT", raw_folder.parent / "no-debian")
    monkeypatch.delenv(fetch_data.ENV_VAR, raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fetch_data.urllib.request, "urlopen", offline)
    return raw_folder


def test_copies_verified_files_from_a_local_folder(tiny_source: Path, tmp_path: Path) -> None:
    dest = fetch("tiny", tmp_path / "data", local_dir=tiny_source)
    assert sorted(p.name for p in dest.iterdir()) == sorted(RAW_NAMES.values())
    for name in RAW_NAMES.values():
        assert (dest / name).read_bytes() == (tiny_source / name).read_bytes()


def test_environment_variable_names_the_local_folder(
    tiny_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fetch_data.ENV_VAR, str(tiny_source.parent))  # the data set's parent
    (tiny_source.parent / "tiny").symlink_to(tiny_source)
    dest = fetch("tiny", tmp_path / "data")
    assert len(list(dest.iterdir())) == 4


def test_uncompressed_local_files_are_accepted(tiny_source: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in RAW_NAMES.values():
        content = gzip.decompress((tiny_source / name).read_bytes())
        (plain / name.removesuffix(".gz")).write_bytes(content)
    dest = fetch("tiny", tmp_path / "data", local_dir=plain)
    for name in RAW_NAMES.values():
        assert gzip.decompress((dest / name).read_bytes()) == (plain / name[:-3]).read_bytes()


def test_corrupt_local_copy_is_refused_and_nothing_is_written(
    tiny_source: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    write_raw_dataset(bad, n_train=10)  # same names, other content
    with pytest.raises(FetchError) as info:
        fetch("tiny", tmp_path / "data", local_dir=bad)
    assert "md5 matches neither" in str(info.value)
    assert not (tmp_path / "data" / "tiny").exists()


def test_offline_without_a_local_copy_fails_fast_and_says_what_it_tried(
    tiny_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = []

    def offline(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fetch_data.urllib.request, "urlopen", offline)
    with pytest.raises(FetchError) as info:
        fetch("tiny", tmp_path / "data")
    message = str(info.value)
    assert len(attempts) == 1  # no network: the other files and mirrors are not tried
    assert "download" in message and "no network" in message
    assert "--local-dir" in message and fetch_data.ENV_VAR in message


def test_files_already_in_place_are_kept(tiny_source: Path, tmp_path: Path) -> None:
    dest = fetch("tiny", tmp_path / "data", local_dir=tiny_source)
    stamp = (dest / RAW_NAMES["train_images"]).stat().st_mtime_ns
    fetch("tiny", tmp_path / "data")  # offline, no local folder: the verified copy suffices
    assert (dest / RAW_NAMES["train_images"]).stat().st_mtime_ns == stamp


def test_unknown_dataset_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="fashion_mnist"):
        fetch("cifar", tmp_path)


def test_cli_exit_code(tiny_source: Path, tmp_path: Path) -> None:
    assert fetch_data.main(["tiny", "--dest", str(tmp_path / "d")]) == 1
    assert (
        fetch_data.main(["tiny", "--dest", str(tmp_path / "d"), "--local-dir", str(tiny_source)])
        == 0
    )


def _corrupt_deflate(path: Path) -> None:
    """Keep the gzip header valid, make the deflate stream unreadable (a reserved block
    type): the kind of damage a half-copied or bit-rotted file has."""
    data = bytearray(path.read_bytes())
    data[10:20] = b"\xff" * 10
    path.write_bytes(bytes(data))


def test_a_corrupt_deflate_stream_is_named_with_its_fix(raw_folder: Path) -> None:
    path = raw_folder / RAW_NAMES["train_images"]
    _corrupt_deflate(path)
    dataset = IDXDataset(filepath=str(path))
    for read in (dataset.item_count, dataset.load):  # the pre-run check and the load
        with pytest.raises(Exception) as info:
            read()
        error = info.value if isinstance(info.value, IDXFormatError) else info.value.__cause__
        assert isinstance(error, IDXFormatError), repr(info.value)
        assert str(path) in str(error) and f"attn-fetch-data {raw_folder.name} --force" in str(
            error
        )


def test_fetch_replaces_a_corrupt_file_from_a_good_source(
    tiny_source: Path, tmp_path: Path
) -> None:
    dest = fetch("tiny", tmp_path / "data", local_dir=tiny_source)
    damaged = dest / RAW_NAMES["test_images"]
    _corrupt_deflate(damaged)
    fetch("tiny", tmp_path / "data", local_dir=tiny_source)  # no zlib.error: replaced
    assert damaged.read_bytes() == (tiny_source / RAW_NAMES["test_images"]).read_bytes()
