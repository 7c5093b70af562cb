"""Where raw data lives, and resolving paths read from metadata without ever leaving the dataset root."""
from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

DATA_ENV = "WILDREID_DATA"
# The same limit and variable as modeling_wildreid's image processor (this package never imports the model):
# PIL's own refusal size by default, lowered by the environment variable.
MAX_IMAGE_PIXELS = 178_956_970
MAX_IMAGE_PIXELS_ENV = "WILDREID_MAX_IMAGE_PIXELS"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class RowImageError(ValueError):
    """A row's image is missing, unreadable, or its box misses it: a problem of that one row (a query batch
    skips it and lists it), unlike a path escaping the dataset root or a malformed file, which stop the load."""


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
    if resolved.exists() and not resolved.is_file():
        raise RowImageError(f"{where}: {relative!r} is not a regular file (a folder, pipe or device); refused "
                            "without reading it")
    if not resolved.is_file():
        raise RowImageError(f"{where}: image file {relative!r} not found under {root}")
    return resolved


def max_image_pixels() -> int:
    """The pixel limit: `$WILDREID_MAX_IMAGE_PIXELS` when set, else `MAX_IMAGE_PIXELS`.

    The same rule as `modeling_wildreid.image_processing_wildreid.max_image_pixels`, kept separate on purpose:
    hub_datasets never imports the model package, and the model package must load as Hub remote code
    without hub_datasets."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV)
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${MAX_IMAGE_PIXELS_ENV} must be a positive integer (pixels), got {text!r}")
    return value


def check_image_file(path: Path, where: str) -> tuple[int, int]:
    """Header-level check that `path` is a readable image within the pixel limit; returns (width, height).

    PIL identifies the format and `verify()` passes (structure/CRC checks where the format has them; pixel
    data is not decoded, so a truncated JPEG body is only caught when the image is decoded). Images above
    [`max_image_pixels`] (decompression bombs: a few hundred KB of PNG can decode to gigabytes) are refused
    like unreadable ones, naming `where`.
    """
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            # Between PIL's warning and error sizes, our own limit below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size = image.size
                if size[0] * size[1] <= limit:
                    image.verify()
    except Image.DecompressionBombError as err:
        raise RowImageError(f"{where}: {path.name!r} has too many pixels, refused as a possible decompression bomb "
                         f"({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RowImageError(f"{where}: {path.name!r} is not a readable image ({type(err).__name__}: {err})") from None
    if size[0] * size[1] > limit:
        raise RowImageError(f"{where}: {path.name!r} is {size[0]}x{size[1]} pixels, above the {limit:,} pixel limit "
                         f"(${MAX_IMAGE_PIXELS_ENV}; a possible decompression bomb)")
    return size


def check_box_near_image(bbox: Sequence[float], theta: float, size: tuple[int, int], where: str) -> None:
    """Refuse an annotation box that misses the image or reaches more than one image width / height past
    its border (rotated boxes by their corners): such a box is a data error, not an animal."""
    x, y, w, h = (float(v) for v in bbox)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    cx, cy = x + w / 2, y + h / 2
    xs = [cx + dx * cos_t - dy * sin_t for dx in (-w / 2, w / 2) for dy in (-h / 2, h / 2)]
    ys = [cy + dx * sin_t + dy * cos_t for dx in (-w / 2, w / 2) for dy in (-h / 2, h / 2)]
    width, height = size
    if max(xs) <= 0 or min(xs) >= width or max(ys) <= 0 or min(ys) >= height:
        raise RowImageError(f"{where}: bbox {list(bbox)} (theta {theta}) does not overlap the {width}x{height} image")
    if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
        raise RowImageError(f"{where}: bbox {list(bbox)} (theta {theta}) reaches more than the image's own size past "
                         f"the border of the {width}x{height} image; check the box's units and order (x, y, w, h)")
