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
