"""The review audit log: one JSON line per decision, appended and flushed to disk before the call returns,
so the log survives a crash of the app; plus the content revision that names a gallery's state."""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Files of galleries saved before revisions existed (fixed names): their bytes define the state.
UNVERSIONED_FILES = ("gallery.json", "embeddings.safetensors", "metadata.parquet", "local_features.npz")


def gallery_revision(directory: str | os.PathLike) -> str:
    """The revision a gallery folder is at: the store's revision id from its manifest (each save writes a
    new one, see `wildreid.identification.store`); for folders saved before revisions existed,
    "sha256:<16 hex>" over their files. Equal revisions mean the same gallery."""
    directory = Path(directory)
    try:
        revision = json.loads((directory / "gallery.json").read_text()).get("revision")
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{directory / 'gallery.json'}: not a readable gallery manifest ({error})") from None
    if revision:
        return str(revision)
    digest = hashlib.sha256()
    for name in UNVERSIONED_FILES:
        path = directory / name
        if path.is_file():
            digest.update(name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    """Append-only JSONL file; every line is one complete record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        # One write() of a whole line on an O_APPEND file: concurrent appenders never interleave lines.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every record, oldest first; a malformed line raises ValueError naming its line number."""
        if not self.path.is_file():
            return []
        records = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}:{number}: not a JSON record ({error})") from None
        return records
