"""Loading annotated crops for batch jobs: one unreadable file is reported, never fatal to the batch.

The pixels go through the shared preprocessing (`modeling_wildreid.image_processing_wildreid.load_image`
and `crop_to_annotation`) so local features and embeddings see the same crop.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

from PIL import Image

from hub_datasets.boxes import central_box


@dataclass(frozen=True)
class LoadFailure:
    """One input that could not be used: `file` names it (a path, or a dataset row's image_id), `reason`
    says why; `index` is its row in the dataset when it came from one."""

    file: str
    reason: str
    index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def describe_source(source: Any) -> str:
    """A short human-readable name for an image source (path, datasets dict, or in-memory object)."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, dict) and source.get("path"):
        return str(source["path"])
    return f"<in-memory {type(source).__name__}>"


def load_crop(source: Any, bbox: Sequence[float] | None = None, theta: float = 0.0,
              center_box: float | None = None) -> Image.Image:
    """Load one image with the shared preprocessing and crop it to its annotation (RGB PIL image); without a
    box, to the central `center_box` fraction of the upright photo when given (a gallery's `center_box`)."""
    from modeling_wildreid.image_processing_wildreid import crop_to_annotation, load_image

    image = load_image(source)
    if bbox is None and center_box is not None:
        bbox = central_box(image.size, center_box)
    return crop_to_annotation(image, bbox=bbox, theta=theta)


def iter_crops(
    sources: Sequence[Any],
    bboxes: Sequence[Sequence[float] | None] | None = None,
    thetas: Sequence[float] | None = None,
    failures: list[LoadFailure] | None = None,
    center_box: float | None = None,
) -> Iterator[tuple[int, Image.Image]]:
    """Yield `(index, crop)` for every readable source; unreadable ones are appended to `failures`. Sources
    without a box are cropped to their central `center_box` fraction when given (see `load_crop`).

    Decoding errors, missing files and invalid boxes are per-item problems and are recorded with the
    file name; anything else (a bug) propagates.
    """
    check_annotation_lengths(sources, bboxes, thetas)
    for index, source in enumerate(sources):
        try:
            crop = load_crop(
                source,
                bbox=None if bboxes is None else bboxes[index],
                theta=0.0 if thetas is None else float(thetas[index]),
                center_box=center_box,
            )
        except (OSError, ValueError) as error:  # ImageLoadError is a ValueError
            if failures is None:
                raise
            failures.append(LoadFailure(describe_source(source), f"{type(error).__name__}: {error}"))
            continue
        yield index, crop


def batched_crops(
    sources: Sequence[Any],
    batch_size: int,
    bboxes: Sequence[Sequence[float] | None] | None = None,
    thetas: Sequence[float] | None = None,
    failures: list[LoadFailure] | None = None,
    center_box: float | None = None,
) -> Iterator[list[tuple[int, Image.Image]]]:
    """`iter_crops` in lists of `batch_size` `(index, crop)` pairs (the last list may be shorter)."""
    batch: list[tuple[int, Image.Image]] = []
    for item in iter_crops(sources, bboxes, thetas, failures=failures, center_box=center_box):
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_annotation_lengths(sources: Sequence[Any], bboxes: Sequence | None, thetas: Sequence | None) -> None:
    """One box and one angle per image, when given."""
    for name, values in (("bboxes", bboxes), ("thetas", thetas)):
        if values is not None and len(values) != len(sources):
            raise ValueError(f"{name} has {len(values)} entries but there are {len(sources)} images")
