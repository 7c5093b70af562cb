"""Small JSON records that name their format and version (calibrators, fusion settings, gallery configs),
so a file of another kind or an older layout is refused with its path instead of half-read."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class RecordFormat:
    name: str
    version: int

    def tag(self, **fields: Any) -> dict[str, Any]:
        """`fields` with this format's name and version in front."""
        return {"format": self.name, "version": self.version, **fields}

    def check(self, data: Any) -> dict[str, Any]:
        """`data` itself when it is a record of this format and version; ValueError otherwise."""
        found = data if isinstance(data, dict) else {}
        if found.get("format") != self.name or found.get("version") != self.version:
            raise ValueError(f"not a {self.name} v{self.version} record: format={found.get('format')!r}, "
                             f"version={found.get('version')!r}")
        return data

    def save(self, path: str | os.PathLike, record: dict[str, Any], **json_options: Any) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.check(record), indent=1, **json_options) + "\n")
        return path

    def load(self, path: str | os.PathLike) -> dict[str, Any]:
        """The checked record in `path`; every failure is a ValueError naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read {self.name} JSON ({error})") from error
        try:
            return self.check(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    def load_as(self, path: str | os.PathLike, build: Callable[[dict[str, Any]], T]) -> T:
        """`build(record)` for the record in `path`; a record `build` rejects is a ValueError naming the file."""
        data = self.load(path)
        try:
            return build(data)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from error


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars and arrays and tuples; anything else as text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    return str(value)


def file_sha256(path: str | os.PathLike, fsync: bool = False) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MB blocks: the checksum every record of a file (gallery
    manifests, ONNX exports, local-feature weights) stores and checks. `fsync`: also flush the file to disk."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if fsync:
            os.fsync(handle.fileno())
    return digest.hexdigest()
