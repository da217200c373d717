"""Content hashes that say what a result was computed from: data, weights and code.

:func:`result_description` and :func:`result_key` are the one recipe for a result's key:
a training's folder of saved epochs, an evaluation in the store, a study cell's run. So a
result is reused only for exactly what produced it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from pydantic import BaseModel

#: Part of every key: raise it when what a key stands for changes (the layout of a saved
#: state, what a description holds), so that an old result is never read as a new one.
KEY_FORMAT = 2


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


def _plain(value: Any) -> Any:
    """``value`` as plain JSON values: a tensor or a model's weights as their hash, a typed
    configuration as its values (defaults included, so an omitted key and its default
    describe the same result)."""
    if isinstance(value, torch.Tensor):
        return tensor_fingerprint(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        if value and all(isinstance(v, torch.Tensor) for v in value.values()):
            return state_fingerprint(dict(value))
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def result_description(code: Iterable[ModuleType], **parts: Any) -> dict[str, Any]:
    """What a result is computed from, as plain JSON values: the source hash of the ``code``
    that computes it and each of ``parts`` (tensors, weights and typed configurations are
    reduced by :func:`_plain`)."""
    return {"code": source_fingerprint(*code), **{k: _plain(v) for k, v in parts.items()}}


def result_key(description: Mapping[str, Any]) -> str:
    """A short stable hash of a :func:`result_description`: a folder's, a file's or a run's
    key."""
    canonical = json.dumps({"format": KEY_FORMAT, **description}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
