"""Content hashes that say what a result was computed from: data, weights and code.

They name the folders saved training states and evaluations are kept in, so that a
result is reused only for exactly what produced it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

import torch


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """A hash of a tensor's shape, type and values."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def combined_fingerprint(*fingerprints: str | None) -> str:
    """One hash of several (``None`` where a part is unknown, which the hash says)."""
    digest = hashlib.blake2b(digest_size=8)
    for fingerprint in fingerprints:
        digest.update(f"{fingerprint};".encode())
    return digest.hexdigest()


def state_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of a model's weights (names, shapes and values)."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(tensor_fingerprint(state_dict[name]).encode())
    return digest.hexdigest()


def source_fingerprint(*modules: ModuleType) -> str:
    """A hash of the source of ``modules`` (a package: every ``.py`` file under it).

    Part of the keys above, so that a change to the code that computes a result (even a
    comment: the hash cannot tell) is never answered with a result of the old code.
    """
    digest = hashlib.blake2b(digest_size=8)
    for module in modules:
        path = Path(module.__file__)
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for file in files:
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()
