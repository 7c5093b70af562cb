"""A gallery on disk: one folder of

    gallery.json                       the manifest: model tag, counts, times, new-individual calibration,
                                       search settings, and the name and SHA-256 of each file below
    embeddings.<revision>.safetensors  (N, D) float32, L2-normalised, tensor "embeddings"
    metadata.<revision>.parquet        image_id, identity, species, path, extra (JSON text), one row per embedding
    local_features.<revision>.npz      optional keypoint cache (see wildreid.matching.descriptor_cache), same image ids
    descriptor_index.<revision>.npz    optional, with the keypoint cache: its RootSIFT descriptors in one faiss index
                                       (`DescriptorIndex.to_npz`), for one-vs-many local retrieval
    .gallery.lock                      held by the one process allowed to write the gallery
    models/, revisions/                `wildreid adapt`'s installed models, and the revisions a model switch
                                       (adapt, or calibrate choosing the embedding) replaced (`revisions`);
                                       a save never touches sub-folders

A save writes a new revision's files under new names beside the current ones, then switches to them by
replacing `gallery.json` in one atomic rename, then deletes the old revision's files: a save killed at any
point leaves the old or the new gallery, never a mix. Loading checks every file against the manifest's
checksum. A writer holds `.gallery.lock` from before its work starts to after the switch; a second writer
fails at once with `GalleryBusyError`. Folders written before revisions existed (fixed file names, no
checksums) still load.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from ..matching.descriptor_cache import LocalFeatureCache
from ..outputs import check_reusable_folder
from ..records import RecordFormat, file_sha256, json_default
from .search import check_embeddings

RECORD = RecordFormat("wildreid-gallery", 1)
CONFIG_FILE = "gallery.json"
LOCK_FILE = ".gallery.lock"
# role -> (stem, suffix): files are named <stem>.<revision><suffix>; <stem><suffix> in folders without revisions.
FILES = {"embeddings": ("embeddings", ".safetensors"), "metadata": ("metadata", ".parquet"),
         "local_features": ("local_features", ".npz"), "descriptor_index": ("descriptor_index", ".npz")}
EMBEDDINGS_FILE, METADATA_FILE, LOCAL_FEATURES_FILE, DESCRIPTOR_INDEX_FILE = ("".join(FILES[role]) for role in FILES)
METADATA_COLUMNS = ("image_id", "identity", "species", "path", "extra")
# A revision's name (see write_revision): only files carrying one are ever cleaned up by a save.
REVISION = r"\d{8}T\d{6}-[0-9a-f]{8}"


class GalleryBusyError(RuntimeError):
    """Another process is writing this gallery, or wrote it since this copy was loaded."""


@contextlib.contextmanager
def writer_lock(directory: str | os.PathLike, create: bool = True) -> Iterator[Path]:
    """Hold the gallery's writer lock (re-entrant within one process); `GalleryBusyError` at once when
    another process holds it. Creates the folder, unless `create` is False (then it must be a gallery)."""
    directory = Path(directory)
    if not create and not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory}: not a gallery folder (no {CONFIG_FILE})")
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK_FILE), timeout=0, is_singleton=True)
    try:
        lock.acquire()
    except Timeout:
        raise GalleryBusyError(f"gallery {directory} is being written by another process (lock {directory / LOCK_FILE}"
                               " is held); wait for it to finish") from None
    try:
        yield directory
    finally:
        lock.release()


def check_new_folder(directory: Path, overwrite: bool) -> None:
    """A gallery is written into a new or empty folder, or over a gallery with `overwrite`; a non-empty folder
    that is not a gallery is refused unless `overwrite` (and even then only the gallery's own files are
    written: clean-up removes nothing but earlier revisions, see `_remove_unreferenced`)."""
    is_gallery = check_reusable_folder(directory, "gallery folder", marker=CONFIG_FILE, allow_flag="--overwrite",
                                       allowed=overwrite, ignored=(LOCK_FILE,))
    if is_gallery and not overwrite:
        raise FileExistsError(f"{directory / CONFIG_FILE} exists; pass --overwrite (overwrite=True) to replace the "
                              "gallery")


def write_revision(directory: Path, config: dict[str, Any], embeddings: np.ndarray, metadata: pd.DataFrame,
                   local_features: LocalFeatureCache | None = None, kept_local_features: dict | None = None,
                   descriptor_index: Callable[[Path], Any] | None = None,
                   kept_descriptor_index: dict | None = None) -> str:
    """Write a new revision and switch `directory` to it (see the module docstring); call under `writer_lock`.

    kept_local_features / kept_descriptor_index: the current manifest's entries of a keypoint cache and its
    descriptor index to carry over unchanged. descriptor_index: writes the descriptor index to a path.
    Returns the new revision's name.
    """
    from safetensors.numpy import save

    revision = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    replaces_legacy = (directory / CONFIG_FILE).is_file() and "files" not in read_config(directory)
    # Serialised here and written under the revision's name: safetensors' save_file writes a `.tmpXXXXXX`
    # file of its own first, which a kill -9 would leave behind under a name no clean-up can claim as ours.
    writers = {"embeddings": lambda path: path.write_bytes(save({"embeddings": embeddings},
                                                                metadata={"format": RECORD.name})),
               "metadata": lambda path: metadata.to_parquet(path, index=False)}
    if local_features is not None:
        writers["local_features"] = local_features.save
    if descriptor_index is not None:
        writers["descriptor_index"] = descriptor_index
    files, written = {}, []
    for role, write in writers.items():
        stem, suffix = FILES[role]
        path = directory / f"{stem}.{revision}{suffix}"
        written.append(path)
        try:
            write(path)
            files[role] = {"name": path.name, "sha256": file_sha256(path, fsync=True)}
        except OSError as error:  # disk full, file size limit, quota: say which file, leave no partial revision
            for partial in written:
                partial.unlink(missing_ok=True)
            raise OSError(error.errno, f"could not write {path} ({error.strerror or error}); the gallery in "
                                       f"{directory} was left as it was, and this revision's files were removed: "
                                       "free space (or raise the file size limit) and run again") from error
    if local_features is None and kept_local_features is not None:
        files["local_features"] = kept_local_features
    if descriptor_index is None and kept_descriptor_index is not None:
        files["descriptor_index"] = kept_descriptor_index
    manifest = directory / f"{CONFIG_FILE}.{revision}.tmp"
    try:
        RECORD.save(manifest, {**config, "revision": revision, "files": files}, default=json_default)
        _fsync(manifest)
    except OSError as error:
        for partial in (*written, manifest):
            partial.unlink(missing_ok=True)
        raise OSError(error.errno, f"could not write {manifest} ({error.strerror or error}); the gallery in "
                                   f"{directory} was left as it was: free space and run again") from error
    os.replace(manifest, directory / CONFIG_FILE)  # the switch
    _fsync(directory)
    _remove_unreferenced(directory, {entry["name"] for entry in files.values()}, replaces_legacy)
    return revision


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    return RECORD.load(Path(directory) / CONFIG_FILE)


def file_entry(config: Mapping[str, Any], role: str) -> dict | None:
    """The manifest entry {name, sha256} of a file, or None (no such file, or a folder without revisions)."""
    return (config.get("files") or {}).get(role)


def current_entry(directory: Path, role: str) -> dict | None:
    """The entry of a file in the folder's current gallery, also for a folder without revisions (its
    fixed-name file, checksummed now), or None when there is no such file."""
    config = read_config(directory)
    if "files" in config:
        return file_entry(config, role)
    legacy = directory / "".join(FILES[role])
    return {"name": legacy.name, "sha256": file_sha256(legacy)} if legacy.is_file() else None


def checked_file(directory: Path, config: Mapping[str, Any], role: str) -> Path:
    """Path of one of the gallery's files, its checksum verified when the manifest has one."""
    entry = file_entry(config, role)
    if entry is None:
        return directory / "".join(FILES[role])
    path = _confined(directory, entry["name"])
    if not path.is_file():
        raise ValueError(f"{path}: missing, but {directory / CONFIG_FILE} lists it")
    if file_sha256(path) != entry["sha256"]:
        raise ValueError(f"{path}: checksum differs from {directory / CONFIG_FILE}; the file was changed after "
                         "the gallery was saved")
    return path


def _confined(directory: Path, name: Any) -> Path:
    """A file the manifest names, which must be a plain file name inside the gallery folder: an absolute path,
    a sub-path or a symlink leading outside is refused (whoever can edit `gallery.json` could otherwise make a
    gallery read any file on the machine that has the right checksum)."""
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"{directory / CONFIG_FILE}: file name {name!r} is not a plain name inside the gallery "
                         "folder; the manifest was edited by hand or is not a wildreid gallery")
    path = directory / name
    if path.is_symlink() and not path.resolve().is_relative_to(directory.resolve()):
        raise ValueError(f"{path} is a symlink to {path.resolve()}, outside the gallery folder {directory}; copy the "
                         "file into the folder instead")
    return path


def read_embeddings(path: Path, dim: int) -> np.ndarray:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path}: cannot read embeddings ({error})") from error
    if "embeddings" not in tensors:
        raise ValueError(f"{path}: no tensor named 'embeddings'")
    try:
        return check_embeddings(tensors["embeddings"], dim)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def read_metadata(path: Path, num_embeddings: int) -> pd.DataFrame:
    try:
        metadata = pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read metadata ({error})") from error
    if missing := [c for c in METADATA_COLUMNS if c not in metadata.columns]:
        raise ValueError(f"{path}: missing columns {missing}")
    if len(metadata) != num_embeddings:
        raise ValueError(f"{path.parent}: {num_embeddings} embeddings but {len(metadata)} metadata rows")
    return metadata[list(METADATA_COLUMNS)].astype(object).where(metadata.notna(), None)


def read_local_features(directory: str | os.PathLike, expected_config: Mapping[str, Any] | None = None
                        ) -> LocalFeatureCache:
    directory = Path(directory)
    path = checked_file(directory, read_config(directory), "local_features")
    return LocalFeatureCache.load(path, expected_config=expected_config)


def model_reference(model: str, gallery_dir: str | os.PathLike) -> str:
    """How a gallery records its model: a local folder relative to the gallery ("./..." or "../..."), so
    the pair can move together and `identify` works from any directory; a Hub id as given."""
    local = Path(model).expanduser()
    if not local.is_dir():
        return model
    relative = os.path.relpath(local.resolve(), Path(gallery_dir).resolve())
    return relative if relative.startswith("..") else f"./{relative}"


def resolve_model_reference(reference: str, gallery_dir: str | os.PathLike) -> str:
    """The model a gallery records, as a path usable from the current directory (or the Hub id)."""
    if reference.startswith(("./", "../")):
        return str((Path(gallery_dir) / reference).resolve())
    return reference


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_unreferenced(directory: Path, referenced: set[str], replaces_legacy: bool) -> None:
    """Delete files of earlier or interrupted revisions, recognised by a revision in their name, and the fixed
    names of the pre-revision gallery this save replaced. Nothing else: a user's
    `embeddings.survey2023.safetensors` beside the gallery is not ours to delete."""
    ours = re.compile("|".join(re.escape(stem) + r"\." + REVISION + re.escape(suffix) for stem, suffix in FILES.values())
                      + "|" + re.escape(CONFIG_FILE) + r"\." + REVISION + r"\.tmp")
    legacy = {"".join(names) for names in FILES.values()} if replaces_legacy else set()
    for path in directory.iterdir():
        if (path.is_file() and not path.is_symlink() and path.name not in referenced
                and (ours.fullmatch(path.name) or path.name in legacy)):
            path.unlink()


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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
