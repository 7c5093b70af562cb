"""Builders for users' own data: a folder per individual, a CSV, or a COCO / Wildbook-style JSON.

All three refuse paths that leave the dataset root (absolute paths, `..`, symlinks pointing out),
check every image at header level (PIL identifies and verifies it; pixels are decoded later), and fail on
missing files, unreadable images, images above the pixel limit (decompression bombs), boxes that miss the
image or reach far past it, duplicate image ids and empty datasets with a message naming the row.

Identities are namespaced as `<species>/<name>`. The species comes from a `species` column / field
where the format has one, else from the `species` argument, else from the dataset folder's name
(folder: the root itself; CSV / JSON: the folder holding the file).

- **folder**: `root/<identity>/**/<image>`; every image under an identity folder (any depth) is one
  row; hidden entries are skipped; images directly in `root` are an error (they have no identity).
  `image_id` = path relative to root.
- **csv**: columns `image` (path relative to `image_root`) and `identity`, optional `image_id`,
  `species`, `bbox` (`x y w h`, commas or spaces, brackets optional), `theta` (radians), `viewpoint`,
  `date` (ISO-8601), `encounter`, `split`. Empty cells are null. Other columns are ignored (logged).
  `image_id` defaults to the image path; an image listed twice (e.g. two animals) needs `image_id`.
- **coco**: `{"images": [{"id", "file_name", "date_captured"?}], "annotations": [{"id", "image_id",
  "name", "bbox"?, "theta"?, "viewpoint"?, "species"? | "category_id"?, "encounter"?, "split"?, "uuid"?}],
  "categories"?: [{"id", "name"}]}`; one row per annotation, `name` = the individual, species from
  the annotation, else its category's name. `image_id` = `<file_name>#<annotation uuid or id>`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetInfo

from .paths import IMAGE_EXTENSIONS, RowImageError, check_box_near_image, check_image_file, resolve_inside
from .schema import FEATURES, to_dataset, validate_row

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("image", "identity", "image_id", "species", "bbox", "theta", "viewpoint", "date", "encounter", "split")


def _species_name(value: str, where: str) -> str:
    species = value.strip()
    if not species or "/" in species:
        raise ValueError(f"{where}: species {value!r} must be non-empty and contain no '/'")
    return species


def _identity(species: str, name: Any, where: str) -> str:
    text = str(name).strip() if name is not None else ""
    if not text:
        raise ValueError(f"{where}: no individual name (identity)")
    return f"{species}/{text}"


def _info(kind: str, location: Path) -> DatasetInfo:
    return DatasetInfo(description=f"User data ({kind}) from {location}", features=FEATURES)


def _finish(rows: list[dict[str, Any]], kind: str, location: Path, where_of: list[str]) -> Dataset:
    """Validate each row under its file position, check ids are unique (naming both rows) and the
    dataset non-empty, then build it through the schema."""
    if not rows:
        raise ValueError(f"{location}: the dataset is empty (no {'images' if kind == 'folder' else 'rows'} found)")
    first: dict[str, str] = {}
    for row, where in zip(rows, where_of):
        validate_row(row, where)
        if row["image_id"] in first:
            raise ValueError(f"{where}: duplicate image_id {row['image_id']!r} (first at {first[row['image_id']]})")
        first[row["image_id"]] = where
    return to_dataset(rows, info=_info(kind, location), name=str(location))


def _check_box(row: dict[str, Any], size: tuple[int, int] | None, where: str) -> None:
    """The row's box against its image's size (when the image was checked); malformed boxes are left to
    the schema check, which names them."""
    bbox = row.get("bbox")
    if size is None or bbox is None:
        return
    try:
        values, theta = [float(v) for v in bbox], float(row.get("theta") or 0.0)
    except (TypeError, ValueError):
        return
    if len(values) == 4 and all(math.isfinite(v) for v in (*values, theta)) and values[2] > 0 and values[3] > 0:
        check_box_near_image(values, theta, size, where)


def _report_row_problems(problems: list[tuple[str, str]], skipped: list[tuple[str, str]] | None,
                         location: Path) -> None:
    """Rows whose image cannot be used: listed in `skipped` when the caller takes them, else one error that
    names the first ten and counts the rest (20,000 missing files are one message, not 20,000 reruns)."""
    if skipped is not None:
        skipped.extend((where, reason.removeprefix(f"{where}: ")) for where, reason in problems)
        return
    if len(problems) == 1:
        raise ValueError(problems[0][1])
    if problems:
        shown = "\n  ".join(reason for _, reason in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(f"{location}: {len(problems)} row(s) name an image that cannot be used:\n  {shown}{more}")


def _posix(path_text: str) -> str:
    return path_text.replace("\\", "/")


def build_folder(root: str | os.PathLike, species: str | None = None, check_images: bool = True,
                 skipped: list[tuple[str, str]] | None = None) -> Dataset:
    """A dataset from `root/<identity>/**/<image>` (see module docstring); `skipped` as for [`build_csv`]."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"folder dataset {root}: not a directory")
    root = root.resolve()
    species = _species_name(species or root.name, f"folder dataset {root}")
    rows, where_of, problems = [], [], []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        where = f"{root}: {relative.as_posix()}"
        if any(part.startswith(".") for part in relative.parts) or path.is_dir():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if len(relative.parts) < 2:
            raise ValueError(f"{where}: image directly in the dataset root; put each individual's images in a folder named after it")
        try:
            resolved = resolve_inside(root, relative.as_posix(), where)
            if check_images:
                check_image_file(resolved, where)
        except RowImageError as error:
            problems.append((where, str(error)))
            continue
        rows.append(
            {
                "image": str(resolved),
                "image_id": relative.as_posix(),
                "identity": _identity(species, relative.parts[0], where),
                "species": species,
                "source": root.name,
            }
        )
        where_of.append(where)
    _report_row_problems(problems, skipped, root)
    return _finish(rows, "folder", root, where_of)


def _parse_bbox(text: str, where: str) -> list[float]:
    parts = [p for p in re.split(r"[\s,]+", text.strip().strip("[]()")) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError(f"{where}: bbox {text!r} must be 4 numbers 'x y width height'")
    return values


def _parse_theta(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: theta {value!r} is not a number (radians)") from None


def _image_root(file: Path, image_root: str | os.PathLike | None) -> Path:
    base = file.parent if image_root is None else file.parent / Path(image_root).expanduser()
    if not base.is_dir():
        raise ValueError(f"{file}: image root {base} is not a directory")
    return base.resolve()


def build_csv(
    path: str | os.PathLike,
    species: str | None = None,
    image_root: str | os.PathLike | None = None,
    check_images: bool = True,
    skipped: list[tuple[str, str]] | None = None,
) -> Dataset:
    """A dataset from a CSV of image paths and identities (see module docstring).

    Args:
        path: the CSV file.
        species: species for rows without a `species` column (default: the CSV's folder name).
        image_root: folder the image paths are relative to and must stay inside (absolute, or relative to
            the CSV's folder; default: the CSV's folder).
        check_images: open each image's header to check it is readable.
        skipped: when a list, rows whose image is missing or unreadable, or whose box misses it, are left out
            and listed there as (row, reason), as a batch of queries wants; otherwise every such row is
            named in one error (the first ten, and how many more).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"CSV dataset {file}: file not found")
    file = file.resolve()
    root = _image_root(file, image_root)
    default_species = species or file.parent.name
    rows, where_of, problems = [], [], []
    with open(file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        missing = [c for c in ("image", "identity") if c not in columns]
        if missing:
            raise ValueError(f"{file}: missing column(s) {missing}; columns are {columns}, expected {list(CSV_COLUMNS)}")
        ignored = [c for c in columns if c not in CSV_COLUMNS]
        if ignored:
            logger.info("%s: ignoring column(s) %s (not in the schema: %s)", file, ignored, list(CSV_COLUMNS))
        for line, record in enumerate(reader, start=2):
            where = f"{file} line {line}"
            cell = {key: (value.strip() if isinstance(value, str) and value.strip() else None) for key, value in record.items() if key}
            if cell.get("image") is None:
                raise ValueError(f"{where}: empty image path")
            try:
                resolved = resolve_inside(root, cell["image"], where)
                size = check_image_file(resolved, where) if check_images else None
            except RowImageError as error:
                problems.append((where, str(error)))
                continue
            row_species = _species_name(cell.get("species") or default_species, where)
            row = {
                "image": str(resolved),
                "image_id": cell.get("image_id") or _posix(cell["image"]),
                "identity": _identity(row_species, cell.get("identity"), where),
                "species": row_species,
                "source": file.stem,
                "viewpoint": cell.get("viewpoint"),
                "date": cell.get("date"),
                "encounter": cell.get("encounter"),
                "split": cell.get("split"),
            }
            if cell.get("bbox") is not None:
                row["bbox"] = _parse_bbox(cell["bbox"], where)
            if cell.get("theta") is not None:
                row["theta"] = _parse_theta(cell["theta"], where)
            try:
                _check_box(row, size, where)
            except RowImageError as error:
                problems.append((where, str(error)))
                continue
            rows.append(row)
            where_of.append(where)
    _report_row_problems(problems, skipped, file)
    return _finish(rows, "csv", file, where_of)


def _annotation_rows(data: dict, file: Path, root: Path, default_species: str, check_images: bool,
                     problems: list[tuple[str, str]]) -> Iterator[tuple[dict, str]]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{file}: expected a JSON object with 'images' and 'annotations' lists (COCO layout)")
    categories = {c.get("id"): c.get("name") for c in data.get("categories") or [] if isinstance(c, dict)}
    images: dict[Any, dict] = {}
    for index, image in enumerate(data["images"]):
        where = f"{file} images[{index}]"
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            raise ValueError(f"{where}: each image needs 'id' and 'file_name'")
        if image["id"] in images:
            raise ValueError(f"{where}: duplicate image id {image['id']!r}")
        images[image["id"]] = image
    checked: dict[Any, Path] = {}
    sizes: dict[Any, tuple[int, int] | None] = {}
    failed: dict[Any, str] = {}  # image id -> why its file cannot be used (each of its annotations is a problem)
    for index, ann in enumerate(data["annotations"]):
        where = f"{file} annotations[{index}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{where}: not an object")
        if ann.get("image_id") not in images:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        image = images[ann["image_id"]]
        where = f"{where} (id {ann.get('uuid') or ann.get('id')!r}, file {image['file_name']!r})"
        if ann["image_id"] not in checked:
            try:
                resolved = resolve_inside(root, image["file_name"], where)
                sizes[ann["image_id"]] = check_image_file(resolved, where) if check_images else None
            except RowImageError as error:
                resolved, failed[ann["image_id"]] = None, str(error)
            checked[ann["image_id"]] = resolved
        if checked[ann["image_id"]] is None:
            problems.append((where, failed[ann["image_id"]]))
            continue
        annotation_key = ann.get("uuid") or ann.get("id")
        if annotation_key is None:
            raise ValueError(f"{where}: annotation needs an 'id' (or 'uuid')")
        species = _species_name(str(ann.get("species") or categories.get(ann.get("category_id")) or default_species), where)
        row = {
            "image": str(checked[ann["image_id"]]),
            "image_id": f"{_posix(str(image['file_name']))}#{annotation_key}",
            "identity": _identity(species, ann.get("name"), where),
            "species": species,
            "source": file.stem,
            "viewpoint": ann.get("viewpoint") or None,
            "date": image.get("date_captured") or None,
            "encounter": None if ann.get("encounter") is None else str(ann["encounter"]),
            "split": ann.get("split") or None,
        }
        if ann.get("bbox") is not None:
            row["bbox"] = ann["bbox"]
        if ann.get("theta") is not None:
            row["theta"] = _parse_theta(ann["theta"], where)
        try:
            _check_box(row, sizes[ann["image_id"]], where)
        except RowImageError as error:
            problems.append((where, str(error)))
            continue
        yield row, where


def build_coco(
    path: str | os.PathLike,
    species: str | None = None,
    image_root: str | os.PathLike | None = None,
    check_images: bool = True,
    skipped: list[tuple[str, str]] | None = None,
) -> Dataset:
    """A dataset from a COCO / Wildbook-style JSON, one row per annotation (see module docstring).

    Args mirror [`build_csv`]; `species` applies to annotations with neither `species` nor a category.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"COCO dataset {file}: file not found")
    file = file.resolve()
    root = _image_root(file, image_root)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    rows, where_of, problems = [], [], []
    for row, where in _annotation_rows(data, file, root, species or file.parent.name, check_images, problems):
        rows.append(row)
        where_of.append(where)
    _report_row_problems(problems, skipped, file)
    return _finish(rows, "coco", file, where_of)
