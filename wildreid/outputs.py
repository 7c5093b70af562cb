"""Checks that an output path can be written, run before any expensive work so that a typo costs
seconds, not a whole training or evaluation."""
from __future__ import annotations

import os
from pathlib import Path


def check_output_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` is, or can be created as, a writable folder; ValueError naming `what` and the path otherwise."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder")
    _check_creatable(path, what)
    return path


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """`path` is, or can be created as, a writable file; ValueError naming `what` and the path otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} is not writable")
    _check_creatable(path.parent, what, target=path)
    return path


def _check_creatable(folder: Path, what: str, target: Path | None = None) -> None:
    """The nearest existing ancestor of `folder` (itself included) must be a writable folder."""
    target = target or folder
    ancestor = folder.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{what} {target}: {ancestor} is a file, so nothing can be created under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {target}: folder {ancestor} is not writable")


def check_reusable_folder(path: str | os.PathLike, what: str, *, marker: str | tuple[str, ...], allow_flag: str,
                          allowed: bool, ignored: tuple[str, ...] = ()) -> bool:
    """The one rule for a folder a command writes into: create it, or reuse it only when it is empty or this
    tool wrote it (it holds `marker`, a file the tool writes into every folder it owns); a non-empty folder
    without the marker is refused (FileExistsError naming the folder and `allow_flag`) unless `allowed`.
    Entries named in `ignored` (the tool's own lock file) do not make a folder non-empty. Returns whether the
    folder holds the marker, so the caller can apply its own rule for replacing its earlier output."""
    path = check_output_folder(path, what)
    markers = (marker,) if isinstance(marker, str) else marker
    if not path.is_dir():
        return False
    if any((path / name).is_file() for name in markers):
        return True
    foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in ignored)
    if foreign and not allowed:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FileExistsError(
            f"{what} {path} is not empty ({shown}) and was not written by this command (no {markers[0]}); nothing "
            f"was changed. Choose a new or empty folder, or pass {allow_flag} to write there anyway (files of the "
            "same names are replaced, no other file is touched)")
    return False
