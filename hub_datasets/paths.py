"""Where raw data lives, and resolving paths read from metadata without ever leaving the dataset root."""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

DATA_ENV = "WILDREID_DATA"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def default_data_dir() -> Path:
    """Root of the raw species folders: `$WILDREID_DATA`, else `../shared/data` next to the repository
    (resolved from this package's location, not the working directory)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    return (Path(__file__).resolve().parents[1].parent / "shared" / "data").resolve()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """`data_dir` when given, else [`default_data_dir`]."""
    return Path(data_dir).expanduser().resolve() if data_dir is not None else default_data_dir()


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """Resolve `relative` (a path read from a CSV/JSON) under `root`, refusing anything that could escape it.

    Rejected with a `ValueError` naming `where`: absolute paths, drive letters, `..` components, and
    paths whose resolved target (after following symlinks) lies outside `root`; a missing file too.
    Backslashes are read as separators so metadata written on Windows works.
    """
    text = str(relative).strip().replace("\\", "/")
    if not text:
        raise ValueError(f"{where}: empty image path")
    if text.startswith("/") or _WINDOWS_DRIVE.match(text):
        raise ValueError(f"{where}: image path {relative!r} is absolute; paths must be relative to the dataset root {root}")
    if ".." in PurePosixPath(text).parts:
        raise ValueError(f"{where}: image path {relative!r} contains '..'; paths must stay inside the dataset root {root}")
    root = root.resolve()
    candidate = root.joinpath(*PurePosixPath(text).parts)
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"{where}: image path {relative!r} resolves to {resolved}, outside the dataset root {root} (symlink?)")
    if not resolved.is_file():
        raise ValueError(f"{where}: image file {relative!r} not found under {root}")
    return resolved


def check_image_file(path: Path, where: str) -> None:
    """Header-level check that `path` is a readable image: PIL identifies the format and `verify()`
    passes (structure/CRC checks where the format has them; pixel data is not decoded, so a
    truncated JPEG body is only caught when the image is decoded)."""
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{where}: {path.name!r} is not a readable image ({type(err).__name__}: {err})") from None
