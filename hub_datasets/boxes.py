"""Boxes for photos that have none: `center_box`, the central part of a loosely cropped photo.

Loosely cropped photos (nyala flanks shot with water, bush and bystanders around the animal) let the background
match: two photos of one sighting share it, and a model or keypoint matcher finds that instead of the animal.
A box around the central fraction of each photo is the cheapest fix short of a detector; being an ordinary
schema `bbox`, it is honoured by everything that crops (training, embedding, local features, galleries).
"""
from __future__ import annotations

import io
import logging
from typing import Any

from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

logger = logging.getLogger(__name__)
# EXIF orientations that turn the stored picture by 90 degrees: the upright photo's width is the stored height.
_QUARTER_TURNS = {5, 6, 7, 8}


def central_box(size: tuple[int, int], fraction: float) -> list[float]:
    """`[x, y, w, h]` around the central `fraction` of an upright photo's width and height."""
    width, height = size
    return [width * (1 - fraction) / 2, height * (1 - fraction) / 2, width * fraction, height * fraction]


def upright_size(image: dict[str, Any]) -> tuple[int, int]:
    """(width, height) of an undecoded image (`{"path", "bytes"}`) as shown, EXIF orientation applied; reads
    the header only."""
    source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    with Image.open(source) as picture:
        width, height = picture.size
        orientation = picture.getexif().get(0x0112)
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def center_boxes(dataset: Dataset, fraction: float, where: str) -> Dataset:
    """Rows without a `bbox` get `[x, y, w, h]` around the central `fraction` of the upright photo's width and
    height; rows with one keep it. A photo whose header cannot be read keeps no box, so the loaders report it
    (naming the file) as they report any unreadable image, instead of this step failing the whole dataset."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{where}: center_box={fraction} must be in (0, 1] (the kept fraction of width and height)")
    if fraction == 1.0:
        return dataset
    unreadable = []

    def add_box(row: dict[str, Any]) -> dict[str, Any]:
        if row["bbox"] is not None:
            return row
        try:
            width, height = upright_size(row["image"])
        except (OSError, ValueError, SyntaxError) as error:
            unreadable.append(f"{row['image_id']} ({type(error).__name__}: {error})")
            return row
        row["bbox"] = central_box((width, height), fraction)
        return row

    undecoded = dataset.cast_column("image", ImageFeature(decode=False))
    boxed = undecoded.map(add_box, load_from_cache_file=False, desc=f"center_box={fraction}")
    if unreadable:
        logger.warning("%s: center_box left %d unreadable image(s) without a box: %s", where, len(unreadable),
                       "; ".join(unreadable[:5]))
    return boxed.cast_column("image", dataset.features["image"])
