"""Query photos as they arrive from a browser: size-checked, hashed, decoded by the shared safe loader
(`modeling_wildreid.image_processing_wildreid.load_image`: pixel limit, corrupt and truncated files named)
and cropped to the typed box; kept, content-addressed, when a decision adds them to the gallery."""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from hub_datasets.boxes import central_box

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}


@dataclass
class QueryPhoto:
    name: str  # the uploaded file's base name, for display and the audit log
    data: bytes
    sha256: str
    bbox: list[float] | None
    crop: Image.Image


def read_photos(files: Sequence[str | os.PathLike], bboxes: Sequence[Sequence[float] | None] | None = None,
                names: Sequence[str] | None = None, *, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                center_box: float | None = None) -> list[QueryPhoto]:
    """Photos from the files an upload handler wrote (never from paths a user typed); a photo without a
    drawn box gets the gallery's `center_box` as its box, so it is cropped like the gallery's photos."""
    from modeling_wildreid.image_processing_wildreid import crop_to_annotation, load_image

    if not files:
        raise ValueError("upload at least one photo")
    if bboxes is not None and len(bboxes) != len(files):
        raise ValueError(f"{len(bboxes)} boxes for {len(files)} photos; give one box per photo or none")
    photos = []
    for i, file in enumerate(files):
        name = names[i] if names else Path(file).name
        size = os.path.getsize(file)
        if size > max_bytes:
            raise ValueError(f"{name}: {size:,} bytes exceeds the upload limit of {max_bytes:,}")
        data = Path(file).read_bytes()
        bbox = None if bboxes is None or bboxes[i] is None else [float(v) for v in bboxes[i]]
        image = load_image({"bytes": data, "path": name})
        if bbox is None and center_box is not None:
            bbox = central_box(image.size, center_box)
        crop = crop_to_annotation(image, bbox=bbox, name=name)
        photos.append(QueryPhoto(name, data, hashlib.sha256(data).hexdigest(), bbox, crop))
    return photos


def store_photo(photo: QueryPhoto, folder: Path) -> Path:
    """`folder/<sha256><suffix>` holding the photo's bytes (written once, atomically); the suffix comes
    from the decoded format, never from the uploaded name."""
    with Image.open(io.BytesIO(photo.data)) as image:
        suffix = SUFFIXES.get(image.format, "")
    path = (folder / f"{photo.sha256}{suffix}").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(photo.data)
        os.replace(temporary, path)
    return path
