"""A gallery on disk: one folder of

    embeddings.safetensors   (N, D) float32, L2-normalised, tensor "embeddings"
    metadata.parquet         image_id, identity, species, path, extra (JSON text), one row per embedding
    gallery.json             model tag, counts, times, new-individual calibration, search settings
    local_features.npz       optional keypoint cache (see wildreid.matching.descriptor_cache), same image ids

Every file is written to a temporary sibling and renamed, so an interrupted save never leaves half a file.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..matching.descriptor_cache import LocalFeatureCache
from ..records import RecordFormat, json_default
from .search import check_embeddings

RECORD = RecordFormat("wildreid-gallery", 1)
EMBEDDINGS_FILE = "embeddings.safetensors"
METADATA_FILE = "metadata.parquet"
CONFIG_FILE = "gallery.json"
LOCAL_FEATURES_FILE = "local_features.npz"
METADATA_COLUMNS = ("image_id", "identity", "species", "path", "extra")


def prepare_folder(directory: str | os.PathLike, overwrite: bool) -> Path:
    directory = Path(directory)
    if (directory / CONFIG_FILE).exists() and not overwrite:
        raise FileExistsError(f"{directory / CONFIG_FILE} exists; pass overwrite=True to replace the gallery")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def write_local_features(directory: Path, local_features: LocalFeatureCache, image_ids: Sequence[str]) -> None:
    missing = [image_id for image_id in image_ids if image_id not in local_features]
    if missing:
        raise ValueError(f"local-feature cache lacks {len(missing)} gallery images, e.g. {missing[:3]}")
    _replace_atomically(directory / LOCAL_FEATURES_FILE, lambda path: local_features.save(path))


def write_arrays(directory: Path, embeddings: np.ndarray, metadata: pd.DataFrame) -> None:
    from safetensors.numpy import save_file

    _replace_atomically(directory / EMBEDDINGS_FILE, lambda path: save_file(
        {"embeddings": embeddings}, str(path), metadata={"format": RECORD.name}))
    _replace_atomically(directory / METADATA_FILE, lambda path: metadata.to_parquet(path, index=False))


def write_config(directory: Path, config: dict[str, Any]) -> None:
    _replace_atomically(directory / CONFIG_FILE, lambda path: RECORD.save(path, config))


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    return RECORD.load(Path(directory) / CONFIG_FILE)


def read_embeddings(directory: Path, dim: int) -> np.ndarray:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(directory / EMBEDDINGS_FILE))
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{directory / EMBEDDINGS_FILE}: cannot read embeddings ({error})") from error
    if "embeddings" not in tensors:
        raise ValueError(f"{directory / EMBEDDINGS_FILE}: no tensor named 'embeddings'")
    try:
        return check_embeddings(tensors["embeddings"], dim)
    except ValueError as error:
        raise ValueError(f"{directory / EMBEDDINGS_FILE}: {error}") from error


def read_metadata(directory: Path, num_embeddings: int) -> pd.DataFrame:
    try:
        metadata = pd.read_parquet(directory / METADATA_FILE)
    except (OSError, ValueError) as error:
        raise ValueError(f"{directory / METADATA_FILE}: cannot read metadata ({error})") from error
    if missing := [c for c in METADATA_COLUMNS if c not in metadata.columns]:
        raise ValueError(f"{directory / METADATA_FILE}: missing columns {missing}")
    if len(metadata) != num_embeddings:
        raise ValueError(f"{directory}: {num_embeddings} embeddings but {len(metadata)} metadata rows")
    return metadata[list(METADATA_COLUMNS)].astype(object).where(metadata.notna(), None)


def read_local_features(directory: str | os.PathLike, expected_config: Mapping[str, Any] | None = None
                        ) -> LocalFeatureCache:
    return LocalFeatureCache.load(Path(directory) / LOCAL_FEATURES_FILE, expected_config=expected_config)


def empty_metadata() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in METADATA_COLUMNS})


def normalise_metadata(metadata: pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence]) -> pd.DataFrame:
    frame = metadata.copy() if isinstance(metadata, pd.DataFrame) else pd.DataFrame(metadata)
    for required in ("image_id", "identity"):
        if required not in frame.columns:
            raise ValueError(f"metadata needs an {required!r} column; got {list(frame.columns)}")
        if frame[required].isna().any():
            raise ValueError(f"metadata row {int(np.flatnonzero(frame[required].isna())[0])} has no {required}")
    extra_columns = [c for c in frame.columns if c not in METADATA_COLUMNS]
    records = frame.to_dict("records")
    out = pd.DataFrame({
        "image_id": [str(r["image_id"]) for r in records],
        "identity": [str(r["identity"]) for r in records],
        "species": [optional_text(r.get("species")) for r in records],
        "path": [optional_text(r.get("path")) for r in records],
        "extra": [_extra_json(r, extra_columns) for r in records],
    }, dtype=object)
    return out


def _extra_json(record: Mapping[str, Any], extra_columns: list[str]) -> str | None:
    extra = record.get("extra")
    extra = json.loads(extra) if isinstance(extra, str) else dict(extra or {})
    extra.update({c: record[c] for c in extra_columns if optional_text(record[c]) is not None})
    return json.dumps(extra, sort_keys=True, default=json_default) if extra else None


def optional_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return str(value)


def _replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Write to a temporary sibling, then rename, so an interrupted save never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
