"""Put a data set's four IDX files into ``data/01_raw/<dataset>/``.

Sources, in order: files already there (checked), a local folder (``--local-dir`` or the
``ATTN_PIPELINE_DATA_DIR`` environment variable), Debian's ``/usr/share/datasets/<name>/``,
then the official download mirrors. Every file is checked by md5, of the ``.gz`` as
published or of its uncompressed bytes, so a re-compressed but identical copy is accepted.

Usage::

    attn-fetch-data mnist
    attn-fetch-data fashion_mnist --local-dir /path/with/the/four/files
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_VAR = "ATTN_PIPELINE_DATA_DIR"
DEBIAN_ROOT = Path("/usr/share/datasets")
DOWNLOAD_TIMEOUT_S = 10


@dataclass(frozen=True)
class RawFile:
    name: str  # the official file name, always .gz
    gz_md5: str  # md5 of the official .gz
    raw_md5: str  # md5 of the uncompressed IDX bytes


@dataclass(frozen=True)
class DataSource:
    files: tuple[RawFile, ...]
    mirrors: tuple[str, ...]
    aliases: tuple[str, ...]  # folder names a local copy may use


SOURCES: dict[str, DataSource] = {
    "mnist": DataSource(
        files=(
            RawFile(
                "train-images-idx3-ubyte.gz",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "6bbc9ace898e44ae57da46a324031adb",
            ),
            RawFile(
                "train-labels-idx1-ubyte.gz",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "a25bea736e30d166cdddb491f175f624",
            ),
            RawFile(
                "t10k-images-idx3-ubyte.gz",
                "9fb629c4189551a2d022fa330f9573f3",
                "2646ac647ad5339dbf082846283269ea",
            ),
            RawFile(
                "t10k-labels-idx1-ubyte.gz",
                "ec29112dd5afa0611ce80d1b7f02629c",
                "27ae3e4e09519cfbb04c329615203637",
            ),
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        aliases=("mnist", "MNIST", "MNIST/raw"),
    ),
    "fashion_mnist": DataSource(
        files=(
            RawFile(
                "train-images-idx3-ubyte.gz",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            ),
            RawFile(
                "train-labels-idx1-ubyte.gz",
                "25c81989df183df01b3e8a0aad5dffbe",
                "9018921c3c673c538a1fc5bad174d6f9",
            ),
            RawFile(
                "t10k-images-idx3-ubyte.gz",
                "bef4ecab320f06d8554ea6380940ec79",
                "8181f5470baa50b63fa0f6fddb340f0a",
            ),
            RawFile(
                "t10k-labels-idx1-ubyte.gz",
                "bb300cfdad3c16e7a12a480ee83cd310",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        aliases=("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"),
    ),
}


class FetchError(RuntimeError):
    """No source gave a complete, verified copy of the data set."""


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _verified_gz(data: bytes, spec: RawFile) -> bytes | None:
    """The file as verified ``.gz`` bytes, or None when neither md5 matches.

    Accepts the official ``.gz``, a re-compressed copy of the same bytes, or the
    uncompressed file (which is then compressed).
    """
    if _md5(data) == spec.gz_md5:
        return data
    if data[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):  # a damaged copy: replaced, not read
            return None
        return data if _md5(raw) == spec.raw_md5 else None
    return gzip.compress(data, mtime=0) if _md5(data) == spec.raw_md5 else None


def _find_in_folder(folder: Path, spec: RawFile) -> Path | None:
    for candidate in (folder / spec.name, folder / spec.name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _local_folders(dataset: str, local_dir: Path | None) -> list[Path]:
    roots = [local_dir] if local_dir is not None else []
    if local_dir is None and os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]))
    folders = []
    for root in roots:
        folders += [root] + [root / alias for alias in SOURCES[dataset].aliases]
    folders += [DEBIAN_ROOT / alias for alias in SOURCES[dataset].aliases]
    return folders


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".partial") as tmp:
        tmp.write(data)
    Path(tmp.name).chmod(0o644)
    Path(tmp.name).replace(path)


def _from_folder(folder: Path, source: DataSource) -> dict[str, bytes]:
    """Verified bytes of all four files from ``folder``; raises FetchError naming the problem."""
    found: dict[str, bytes] = {}
    for spec in source.files:
        path = _find_in_folder(folder, spec)
        if path is None:
            raise FetchError(f"{folder}: {spec.name} missing")
        data = _verified_gz(path.read_bytes(), spec)
        if data is None:
            raise FetchError(f"{path}: md5 matches neither the official .gz nor its contents")
        found[spec.name] = data
    return found


def _download(source: DataSource) -> dict[str, bytes]:
    errors = []
    for mirror in source.mirrors:
        try:
            found = {}
            for spec in source.files:
                url = mirror + spec.name
                logger.info("downloading %s", url)
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310
                    data = response.read()
                if _md5(data) != spec.gz_md5:
                    raise FetchError(f"{url}: md5 {_md5(data)} != official {spec.gz_md5}")
                found[spec.name] = data
            return found
        except (urllib.error.URLError, OSError, FetchError) as exc:
            errors.append(f"{mirror}: {exc}")
    raise FetchError("; ".join(errors))


def fetch(
    dataset: str, dest_root: Path, *, local_dir: Path | None = None, force: bool = False
) -> Path:
    """Make ``dest_root/<dataset>/`` hold the four verified files; return that folder.

    Nothing in the destination is replaced until a complete, verified set is in hand.
    """
    if dataset not in SOURCES:
        raise FetchError(f"unknown data set '{dataset}': choose one of {sorted(SOURCES)}")
    source = SOURCES[dataset]
    dest = dest_root / dataset
    tried: list[str] = []
    if not force:
        try:
            _from_folder(dest, source)
            logger.info("%s: all four files present and verified", dest)
            return dest
        except FetchError as exc:
            tried.append(f"already in place: {exc}")
    if local_dir is not None and not local_dir.is_dir():
        raise FetchError(f"--local-dir {local_dir} is not a folder")
    for folder in _local_folders(dataset, local_dir):
        if not folder.is_dir() or folder.resolve() == dest.resolve():
            tried.append(f"{folder}: no such folder")
            continue
        try:
            files = _from_folder(folder, source)
        except FetchError as exc:
            tried.append(str(exc))
            continue
        logger.info("copying %s from %s", dataset, folder)
        break
    else:
        try:
            files = _download(source)
        except FetchError as exc:
            tried.append(f"download: {exc}")
            raise FetchError(
                f"could not get {dataset}. Tried:\n  - " + "\n  - ".join(tried) + "\n"
                f"Fix: connect to the internet, or pass a folder holding the four files "
                f"({', '.join(f.name for f in source.files)}) with --local-dir DIR or "
                f"{ENV_VAR}=DIR."
            ) from None
    for name, data in files.items():
        _write_atomically(dest / name, data)
    logger.info("%s ready in %s", dataset, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(SOURCES))
    parser.add_argument(
        "--local-dir",
        type=Path,
        default=None,
        help=f"folder with the four IDX files (default: ${ENV_VAR})",
    )
    parser.add_argument(
        "--dest",
        type=Path,
        default=Path("data/01_raw"),
        help="raw data root (default: data/01_raw)",
    )
    parser.add_argument("--force", action="store_true", help="fetch even if files are in place")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        fetch(args.dataset, args.dest, local_dir=args.local_dir, force=args.force)
    except FetchError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
