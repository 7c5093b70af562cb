"""The one schema every wildreid dataset uses, and the single place rows are checked against it.

Every builder (real species, users' own data, synthetic) produces plain row dicts and turns them into a
`datasets.Dataset` with [`to_dataset`], so a bad row is caught once, with a message naming it.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetInfo, Features, Image, List, Value

FEATURES = Features(
    {
        "image": Image(),
        "image_id": Value("string"),
        "identity": Value("string"),
        "species": Value("string"),
        "bbox": List(Value("float32"), length=4),
        "theta": Value("float32"),
        "viewpoint": Value("string"),
        "date": Value("string"),
        "encounter": Value("string"),
        "source": Value("string"),
        "split": Value("string"),
    }
)

FIELD_DOCS = {
    "image": "The photograph (embedded bytes in published shards; a file path while building).",
    "image_id": "Stable identifier of the row, unique within the dataset (for real species: "
    "`<species>/<path in the source>`).",
    "identity": "The individual animal, namespaced by species as `<species>/<name>`, so two species' "
    "individuals called `A` never merge.",
    "species": "Species (config) name, e.g. `lion`; for synthetic data the pattern family, e.g. "
    "`synthetic-stripes`.",
    "bbox": "Box around the animal, `[x, y, width, height]` in pixels of the full image; null means "
    "the whole image.",
    "theta": "Rotation of the box about its centre in radians (Wildbook convention); 0 when the box "
    "is axis-aligned or absent.",
    "viewpoint": "Side or part of the animal shown (e.g. `left`, `right`, `front`, `left_face`); null "
    "when unknown.",
    "date": "When the photo was taken, ISO-8601 (`YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS[+HH:MM]`); "
    "null when unknown.",
    "encounter": "Sighting, video or session the photo belongs to; photos sharing it are "
    "near-duplicates and never straddle a group-aware split. Null when unknown.",
    "source": "Name of the dataset the row comes from.",
    "split": "Split the row belongs to (`train`, `val`, `test`, ...): the source's official split "
    "where it has one, else the documented default split; null for user data without one.",
}

REQUIRED_FIELDS = ("image", "image_id", "identity", "species", "source")
OPTIONAL_DEFAULTS = {"bbox": None, "theta": 0.0, "viewpoint": None, "date": None, "encounter": None, "split": None}
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")  # what DatasetDict.push_to_hub accepts as a split name


class SchemaError(ValueError):
    """A row does not fit [`FEATURES`]; the message names the row and the field."""


def normalize_date(value: str) -> str:
    """Return `value` as canonical ISO-8601 (`YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS[.ffffff][+HH:MM]`).

    Raises `ValueError` when it is not an ISO-8601 date or date-time.
    """
    text = str(value).strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"date {value!r} is not ISO-8601 (expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)") from None


def parse_date(value: str) -> datetime:
    """Parse a schema `date` into a naive UTC `datetime` so dates of any precision and zone compare."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def _row_name(row: Mapping[str, Any], index: int) -> str:
    image_id = row.get("image_id")
    return f"row {index} ({image_id!r})" if isinstance(image_id, str) and image_id else f"row {index}"


def _check_image(value: Any, where: str) -> Any:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        if not os.path.isfile(value):
            raise SchemaError(f"{where}: image file {value!r} does not exist")
        return value
    if isinstance(value, Mapping) and set(value) <= {"bytes", "path"}:
        if value.get("bytes") is None and not (value.get("path") and os.path.isfile(value["path"])):
            raise SchemaError(f"{where}: image has neither bytes nor an existing file path: {value.get('path')!r}")
        return {"bytes": value.get("bytes"), "path": value.get("path")}
    raise SchemaError(f"{where}: image must be a file path or a {{'bytes', 'path'}} dict, got {type(value).__name__}")


def _check_optional_string(row: Mapping[str, Any], field: str, where: str) -> str | None:
    value = row.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(f"{where}: {field} must be a non-empty string or null, got {value!r}")
    return value.strip()


def validate_row(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check one row against [`FEATURES`] and return it complete (defaults filled, values normalised).

    `where` names the row in error messages (e.g. `"annotations.csv line 7"`).
    """
    unknown = set(row) - set(FEATURES)
    if unknown:
        raise SchemaError(f"{where}: unknown field(s) {sorted(unknown)}; the schema has {list(FEATURES)}")
    missing = [field for field in REQUIRED_FIELDS if row.get(field) in (None, "")]
    if missing:
        raise SchemaError(f"{where}: missing required field(s) {missing}")
    out: dict[str, Any] = {**OPTIONAL_DEFAULTS, **row}
    for field in ("image_id", "identity", "species", "source"):
        if not isinstance(out[field], str) or not out[field].strip():
            raise SchemaError(f"{where}: {field} must be a non-empty string, got {out[field]!r}")
    species = out["species"]
    if "/" in species:
        raise SchemaError(f"{where}: species {species!r} must not contain '/' (it namespaces identities)")
    if not out["identity"].startswith(species + "/") or out["identity"] == species + "/":
        raise SchemaError(f"{where}: identity {out['identity']!r} must be namespaced as '{species}/<name>'")
    out["image"] = _check_image(out["image"], where)
    bbox = out["bbox"]
    if bbox is not None:
        try:
            bbox = [float(v) for v in bbox]
        except (TypeError, ValueError):
            raise SchemaError(f"{where}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}") from None
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0:
            raise SchemaError(f"{where}: bbox must be 4 finite numbers [x, y, width>0, height>0], got {out['bbox']!r}")
        out["bbox"] = bbox
    theta = 0.0 if out["theta"] is None else out["theta"]
    try:
        theta = float(theta)
    except (TypeError, ValueError):
        raise SchemaError(f"{where}: theta must be a number (radians), got {out['theta']!r}") from None
    if not math.isfinite(theta):
        raise SchemaError(f"{where}: theta must be finite, got {theta!r}")
    out["theta"] = theta
    for field in ("viewpoint", "encounter", "date", "split"):
        out[field] = _check_optional_string(out, field, where)
    if out["date"] is not None:
        try:
            out["date"] = normalize_date(out["date"])
        except ValueError as err:
            raise SchemaError(f"{where}: {err}") from None
    if out["split"] is not None and not SPLIT_NAME.match(out["split"]):
        raise SchemaError(f"{where}: split {out['split']!r} must be letters, digits and '_' (e.g. train, val, test)")
    return out


def validate_rows(rows: Iterable[Mapping[str, Any]], name: str = "dataset") -> list[dict[str, Any]]:
    """Check every row (see [`validate_row`]) and that `image_id`s are unique and there is at least one row.

    Returns the complete, normalised rows. `name` prefixes error messages.
    """
    checked: list[dict[str, Any]] = []
    first_index: dict[str, int] = {}
    for index, row in enumerate(rows):
        where = f"{name}: {_row_name(row, index)}"
        out = validate_row(row, where)
        if out["image_id"] in first_index:
            raise SchemaError(f"{where}: duplicate image_id {out['image_id']!r} (first used by row {first_index[out['image_id']]})")
        first_index[out["image_id"]] = index
        checked.append(out)
    if not checked:
        raise SchemaError(f"{name}: the dataset is empty (no rows)")
    return checked


def to_dataset(rows: Iterable[Mapping[str, Any]], info: DatasetInfo | None = None, name: str = "dataset") -> Dataset:
    """Validate `rows` and return them as an in-memory `datasets.Dataset` with exactly [`FEATURES`].

    Images stay file paths (or bytes for generated data); they are embedded only when publishing.
    """
    checked = validate_rows(rows, name)
    columns = {field: [row[field] for row in checked] for field in FEATURES}
    return Dataset.from_dict(columns, features=FEATURES, info=info)
