"""Read a MiewID checkpoint into a plain state dict: safetensors or `torch.load(weights_only=True)` files,
folders and Hub repo ids, with training wrappers and key prefixes removed and recorded (`convert_miewid`
maps the result onto a wildreid model)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

# Containers that training scripts wrap a state dict in; MiewID's resumable checkpoints use the first.
STATE_DICT_WRAPPERS = ("model_state_dict", "state_dict", "model")
# DataParallel / AveragedModel ("module.") and Lightning-style ("model.") prefixes.
KEY_PREFIXES = ("module.", "model.")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
MAX_LISTED = 20


class MiewIDConversionError(ValueError):
    """A checkpoint cannot be read or does not describe a MiewID network; the message names the cause."""


def listing(lines: Sequence[str]) -> str:
    """Lines for an error message, indented, at most MAX_LISTED of them."""
    shown = "\n  ".join(lines[:MAX_LISTED])
    more = f"\n  ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    return f"\n  {shown}{more}"


def _read_file(path: Path) -> object:
    """Tensors from a safetensors file, or a `torch.load(weights_only=True)` object (no arbitrary pickle)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise MiewIDConversionError(f"{path}: cannot be read ({error.strerror or error})") from None
    # safetensors: 8-byte little-endian header length, then a JSON header.
    if len(head) > 8 and head[8:9] == b"{":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as error:  # safetensors raises its own error type for any malformed file
            raise MiewIDConversionError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle and EOF failures all mean the same thing here
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Weights only load failed" in str(error):
            raise MiewIDConversionError(
                f"{path}: holds Python objects other than tensors and plain containers; it is only read with "
                f"torch.load(weights_only=True), never unpickled. Re-save the state dict alone "
                f"(torch.save(model.state_dict(), ...) or safetensors). Detail: {reason}"
            ) from None
        raise MiewIDConversionError(
            f"{path}: not a readable safetensors or PyTorch checkpoint (truncated or corrupt?): {reason}"
        ) from None


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    failures = []
    for filename in HUB_FILENAMES:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        except (OSError, EntryNotFoundError, HFValidationError) as error:
            failures.append(f"{filename}: {type(error).__name__}: {str(error).strip().splitlines()[0]}")
    raise MiewIDConversionError(
        f"could not fetch a checkpoint of Hub repo {repo_id!r} (offline, missing or private?); download "
        f"its model.safetensors yourself and pass the file path:{listing(failures)}"
    )


def _unwrap(loaded: object, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensor dict inside a checkpoint, with wrapper / prefix / ignored entries recorded."""
    if not isinstance(loaded, Mapping):
        raise MiewIDConversionError(f"{name}: expected a dict of tensors, found {type(loaded).__name__}")
    notes: dict = {}
    for wrapper in STATE_DICT_WRAPPERS:
        if isinstance(loaded.get(wrapper), Mapping):
            notes["wrapper"] = wrapper
            notes["ignored_entries"] = sorted(str(k) for k in loaded if k != wrapper)
            loaded = loaded[wrapper]
            break
    non_tensors = [f"{k}: {type(v).__name__}" for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise MiewIDConversionError(f"{name}: entries that are not tensors:{listing(non_tensors)}")
    state_dict = dict(loaded)
    stripped = []
    prefixed = [k for k in state_dict if k != "n_averaged"]
    while prefixed:
        prefix = next((p for p in KEY_PREFIXES if all(k.startswith(p) for k in prefixed)), None)
        if prefix is None:
            break
        stripped.append(prefix)
        state_dict = {k[len(prefix):] if k != "n_averaged" else k: v for k, v in state_dict.items()}
        prefixed = [k[len(prefix):] for k in prefixed]
    if stripped:
        notes["stripped_prefix"] = "".join(stripped)
    return state_dict, notes


def load_miewid_checkpoint(
    checkpoint: str | os.PathLike, revision: str | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a MiewID state dict from a file or a Hub repo id; returns it and its provenance.

    Files are safetensors, or PyTorch `.bin`/`.pth` read with ``torch.load(weights_only=True)`` only.
    Wrappers such as ``{"model_state_dict": ...}`` and ``module.``/``model.`` key prefixes are removed
    (and recorded). A Hub id (``owner/name``) is fetched with `huggingface_hub` (its ``model.safetensors``,
    else ``pytorch_model.bin``); offline or missing repos raise :class:`MiewIDConversionError`.
    """
    text = os.fspath(checkpoint)
    path = Path(text)
    # A local path may be private: the file or folder name, next to the hash, is the recorded provenance.
    source = path.name
    if path.is_dir():
        files = [path / name for name in HUB_FILENAMES if (path / name).is_file()]
        if not files:
            raise MiewIDConversionError(f"{path}: folder holds neither {' nor '.join(HUB_FILENAMES)}")
        path = files[0]
    elif not path.exists():
        if not HUB_ID.match(text) or text.startswith((".", "/")) or path.suffix in CHECKPOINT_SUFFIXES:
            raise MiewIDConversionError(f"{text}: file not found (and not a Hub repo id of the form owner/name)")
        path = _download(text, revision)
        source = text
    state_dict, notes = _unwrap(_read_file(path), str(path))
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    provenance = {"checkpoint": source, "file": path.name, "sha256": digest.hexdigest(), **notes}
    if revision:
        provenance["revision"] = revision
    return state_dict, provenance
