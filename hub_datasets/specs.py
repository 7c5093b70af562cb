"""Dataset specs: one short text names any dataset wildreid can read. Parsed here and nowhere else.

Grammar (`[PARAMS]` and `[:SPLIT]` are optional; SPLIT is a split name such as `train`, `val`, `test`)::

    NAME[PARAMS][:SPLIT]            built-in source: lion, nyala, dog, pig, synthetic
    KIND[PARAMS]:PATH[:SPLIT]       user data, KIND = folder | csv | coco
    LOCATION:CONFIG[:SPLIT]         published dataset: Hub repo id (org/name) or local folder, and its
                                    species config

    PARAMS = "[" key=value {"," key=value} "]"

Examples: `lion`, `lion:val`, `dog:test`, `synthetic`, `synthetic[n_identities=20,seed=3]:train`,
`folder:/data/zebras`, `csv[species=zebra]:/data/zebras/labels.csv:train`, `coco:/data/ann.json`,
`org/wildreid:lion`, `org/wildreid:lion:val`, `/data/published:nyala:test`.

Rules:

- The first token (letters, digits, `_`, `-`) decides the form: a built-in name, else `folder` /
  `csv` / `coco`, else the whole spec is a published `LOCATION:CONFIG[:SPLIT]`. A published location
  must contain `/` (an `org/name` repo id or a path; use `./name` for a folder in the working
  directory). It is read as a local folder when that folder exists, else as a Hub repo id.
- For user data the text after the last `:` is the split when it is a plain name (letters, digits,
  `_`); so a PATH ending in `:name` needs an explicit split after it. Relative paths are relative to
  the working directory.
- Without a split, all rows are returned (with their `split` column); with one, only its rows, and a
  split with no rows is an error listing the splits present.
- Built-in real species read raw data from `data_dir` (argument of [`load_spec`]), else
  `$WILDREID_DATA`, else `../shared/data` next to the repository root (located from this package, not
  the working directory).
- Sampling parameters, for every built-in and user-data source: `max_identities` (per species),
  `max_images_per_identity`, `sample_seed` (default 0); applied after the split, deterministic
  (`hub_datasets.splits.subsample`). E.g. `dog[max_identities=100]:test`, `lion[max_images_per_identity=2]:train`.
- Re-split parameters, for the same sources: `split_strategy` (a key of `hub_datasets.splits.SPLITTERS`:
  closed_set, open_set, disjoint_set, group_aware, time_aware), `test_fraction`, `split_seed`; they replace
  the source's split with `train`/`test` before `:SPLIT` selects, e.g. `lion[split_strategy=closed_set]:test`.
  `resplit_from` re-splits only the rows of one source split, e.g. individuals held out of training to fit
  fusion on: `pig[resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]:train` trains on 80 % of
  pig:train's individuals, `...:test` is the other 20 %, and pig:test stays untouched.
- Annotation parameter, for the same sources: `center_box` (a fraction in (0, 1]) gives every row without a
  `bbox` one around the central part of its photo, e.g. `nyala[center_box=0.6]:test` keeps the middle 60 % of
  width and height, so the background of a loosely cropped photo is not what matches (`hub_datasets.boxes`).
- Parameters: `synthetic` takes `n_species, n_identities, images_per_identity, image_size, seed,
  with_boxes, family`; `folder` takes `species, check_images`; `csv` and `coco` take `species, image_root,
  check_images`; real species take only the sampling, re-split and annotation parameters; published datasets take none. Booleans are `true/false/1/0/yes/no`.
"""
from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset

from .boxes import center_boxes
from .schema import FEATURES
from .species import SPECIES_BUILDERS, build_species
from .splits import SPLITTERS, split_dataset, subsample
from .synthetic import build_synthetic
from .user_data import build_coco, build_csv, build_folder

BUILTIN_NAMES = (*SPECIES_BUILDERS, "synthetic")
USER_KINDS = ("folder", "csv", "coco")
_SOURCE_PARAMETERS: dict[str, dict[str, type]] = {
    **{name: {} for name in SPECIES_BUILDERS},
    "synthetic": {
        "n_species": int,
        "n_identities": int,
        "images_per_identity": int,
        "image_size": int,
        "seed": int,
        "with_boxes": bool,
        "family": str,
    },
    "folder": {"species": str, "check_images": bool},
    "csv": {"species": str, "image_root": str, "check_images": bool},
    "coco": {"species": str, "image_root": str, "check_images": bool},
}
# Every built-in and user-data source also takes these; they are applied after the split is selected.
SAMPLING_PARAMETERS: dict[str, type] = {"max_identities": int, "max_images_per_identity": int, "sample_seed": int}
# ... and these, which replace the source's own split before it is selected.
RESPLIT_PARAMETERS: dict[str, type] = {"split_strategy": str, "test_fraction": float, "split_seed": int, "resplit_from": str}
# ... and these, which change how rows are cropped, not which images they are.
ANNOTATION_PARAMETERS: dict[str, type] = {"center_box": float}
PARAMETERS = {source: {**params, **SAMPLING_PARAMETERS, **RESPLIT_PARAMETERS, **ANNOTATION_PARAMETERS}
              for source, params in _SOURCE_PARAMETERS.items()}
_HEAD = re.compile(r"^(?P<name>[A-Za-z][\w-]*)(?:\[(?P<params>[^\]]*)\])?(?::(?P<rest>.*))?$", re.S)
_OPEN_PARAMS = re.compile(r"^(?P<name>[A-Za-z][\w-]*)\[")
_NAME = re.compile(r"^\w+$")
_CONFIG = re.compile(r"^[\w-]+$")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}

FORMS = (
    f"built-in NAME[:SPLIT] with NAME in {', '.join(BUILTIN_NAMES)}; "
    "user data folder:PATH[:SPLIT], csv:PATH[:SPLIT], coco:PATH[:SPLIT]; "
    "published ORG/REPO:CONFIG[:SPLIT] or /path/to/folder:CONFIG[:SPLIT]"
)


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec (see module docstring).

    Attributes:
        kind: `builtin`, `folder`, `csv`, `coco` or `published`.
        name: built-in source name (`lion`, `synthetic`) or published config; None for user data.
        location: path of user data, or Hub repo id / local folder of a published dataset.
        split: split to select, None for all rows.
        params: builder keyword arguments as sorted `(key, value)` pairs.
    """

    kind: str
    name: str | None = None
    location: str | None = None
    split: str | None = None
    params: tuple[tuple[str, Any], ...] = field(default=())

    def __str__(self) -> str:
        params = "[" + ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.params) + "]"
        text = {
            "builtin": f"{self.name}{params if self.params else ''}",
            "published": f"{self.location}:{self.name}",
        }.get(self.kind, f"{self.kind}{params if self.params else ''}:{self.location}")
        return f"{text}:{self.split}" if self.split else text


def _convert(spec: str, key: str, value: str, kind: type) -> Any:
    if kind is bool:
        if value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"dataset spec {spec!r}: parameter {key}={value!r} must be true or false")
    if kind is int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"dataset spec {spec!r}: parameter {key}={value!r} must be an integer") from None
    if kind is float:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"dataset spec {spec!r}: parameter {key}={value!r} must be a number") from None
    if not value:
        raise ValueError(f"dataset spec {spec!r}: parameter {key} is empty")
    return value


def _parse_params(spec: str, source: str, text: str | None) -> tuple[tuple[str, Any], ...]:
    if text is None:
        return ()
    allowed = PARAMETERS[source]
    params: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep:
            raise ValueError(f"dataset spec {spec!r}: parameter {item!r} must be key=value")
        if key not in allowed:
            valid = ", ".join(allowed) if allowed else "none"
            raise ValueError(f"dataset spec {spec!r}: unknown parameter {key!r} for {source}; valid: {valid}")
        if key in params:
            raise ValueError(f"dataset spec {spec!r}: parameter {key!r} given twice")
        params[key] = _convert(spec, key, value, allowed[key])
    return tuple(sorted(params.items()))


def _check_split(spec: str, split: str) -> str:
    if not _NAME.match(split):
        raise ValueError(f"dataset spec {spec!r}: split {split!r} must be a plain name such as train, val or test")
    return split


def parse_spec(text: str) -> DatasetSpec:
    """Parse a dataset spec (grammar in the module docstring); raises `ValueError` naming the spec."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty dataset spec; expected {FORMS}")
    spec = text.strip()
    head = _HEAD.match(spec)
    opened = _OPEN_PARAMS.match(spec)
    if head is None and opened and opened["name"] in (*BUILTIN_NAMES, *USER_KINDS):
        raise ValueError(f"dataset spec {spec!r}: parameters of {opened['name']} must be [key=value,...] closed by "
                         f"']' before any ':', e.g. {opened['name']}[{next(iter(PARAMETERS[opened['name']]))}=...]")
    if head and head["name"] in BUILTIN_NAMES:
        rest = head["rest"]
        split = _check_split(spec, rest) if rest is not None else None
        return DatasetSpec("builtin", name=head["name"], split=split, params=_parse_params(spec, head["name"], head["params"]))
    if head and head["name"] in USER_KINDS:
        rest = head["rest"]
        if not rest:
            raise ValueError(f"dataset spec {spec!r}: {head['name']} needs a path, e.g. {head['name']}:/data/my_animals")
        location, split = rest, None
        before, sep, after = rest.rpartition(":")
        if sep and before and _NAME.match(after):
            location, split = before, after
        return DatasetSpec(
            head["name"], location=location, split=split, params=_parse_params(spec, head["name"], head["params"])
        )
    segments = spec.split(":")
    if len(segments) >= 3 and _CONFIG.match(segments[-2]) and _NAME.match(segments[-1]):
        location, config, split = ":".join(segments[:-2]), segments[-2], segments[-1]
    elif len(segments) >= 2 and _CONFIG.match(segments[-1]):
        location, config, split = ":".join(segments[:-1]), segments[-1], None
    else:
        location, config, split = spec, None, None
    if "/" not in location and "\\" not in location:
        name = head["name"] if head else spec
        raise ValueError(f"dataset spec {spec!r}: unknown dataset {name!r}; expected {FORMS}")
    if config is None:
        raise ValueError(f"dataset spec {spec!r}: a published dataset needs its species config, e.g. {location}:lion")
    return DatasetSpec("published", name=config, location=location, split=split)


def _rows_of_split(dataset: Dataset, split: str, spec: str, problem: str) -> Dataset:
    """The rows whose split is `split`; none is an error naming the spec, the `problem` and the splits present."""
    labels = list(dataset["split"])
    indices = [i for i, label in enumerate(labels) if label == split]
    if not indices:
        present = sorted({label for label in labels if label is not None})
        hint = f"splits present: {present}" if present else "it has no split column values (assign one with hub_datasets.splits)"
        raise ValueError(f"dataset spec {spec!r}: {problem}; {hint}")
    return dataset.select(indices)


def _select_split(dataset: Dataset, spec: DatasetSpec) -> Dataset:
    if spec.split is None:
        return dataset
    return _rows_of_split(dataset, spec.split, str(spec), f"no rows in split {spec.split!r}")


def _load_published(spec: DatasetSpec) -> Dataset:
    location = spec.location
    local = Path(location).expanduser()
    if local.is_dir():
        location = str(local.resolve())
    elif not _REPO_ID.match(location):
        raise ValueError(f"dataset spec {str(spec)!r}: {location!r} is neither an existing folder nor a Hub repo id (org/name)")
    try:
        loaded = load_dataset(location, spec.name, split=spec.split)
    except ValueError as err:
        raise ValueError(f"dataset spec {str(spec)!r}: {err}") from err
    if isinstance(loaded, DatasetDict):
        loaded = concatenate_datasets([loaded[split] for split in loaded])
    if loaded.features != FEATURES:
        try:
            loaded = loaded.cast(FEATURES)
        except (ValueError, TypeError) as err:
            raise ValueError(f"dataset spec {str(spec)!r}: not in the wildreid schema ({err})") from err
    return loaded


def _resplit(dataset: Dataset, spec: str, options: dict[str, Any]) -> Dataset:
    if "split_strategy" not in options:
        raise ValueError(f"dataset spec {spec!r}: test_fraction / split_seed / resplit_from need split_strategy")
    if "resplit_from" in options:  # only that split's rows are cut again; the other splits are left out
        dataset = _rows_of_split(dataset, options["resplit_from"], spec, f"resplit_from={options['resplit_from']!r} has no rows")
    strategy = options["split_strategy"]
    kwargs = {"seed": options.get("split_seed", 0), "test_fraction": options.get("test_fraction")}
    accepted = inspect.signature(SPLITTERS[strategy]).parameters if strategy in SPLITTERS else kwargs
    kwargs = {key: value for key, value in kwargs.items() if value is not None and key in accepted}
    try:
        return split_dataset(dataset, strategy, **kwargs)
    except ValueError as error:
        raise ValueError(f"dataset spec {spec!r}: {error}") from None


def load_spec(spec: DatasetSpec | str, data_dir: str | os.PathLike | None = None,
              skipped: list[tuple[str, str]] | None = None) -> Dataset:
    """Load the dataset a spec names, in the [`FEATURES`] schema (images as paths or embedded bytes).

    Args:
        spec: a [`DatasetSpec`] or spec text.
        data_dir: raw data root for built-in real species (default `$WILDREID_DATA`, see module docstring).
        skipped: for a user's folder, CSV or COCO file: rows whose image is missing or unreadable are left
            out and listed here as (row, reason) instead of failing the load (queries to identify).
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    params = dict(parsed.params)
    sampling = {key: params.pop(key) for key in SAMPLING_PARAMETERS if key in params}
    resplit = {key: params.pop(key) for key in RESPLIT_PARAMETERS if key in params}
    center_box = params.pop("center_box", None)
    if parsed.kind == "published":
        return _load_published(parsed)
    if parsed.kind == "builtin" and parsed.name == "synthetic":
        try:
            dataset = build_synthetic(**params)
        except ValueError as error:
            raise ValueError(f"dataset spec {str(parsed)!r}: {error}") from None
    elif parsed.kind == "builtin":
        dataset = build_species(parsed.name, data_dir)
    else:
        builder = {"folder": build_folder, "csv": build_csv, "coco": build_coco}[parsed.kind]
        dataset = builder(parsed.location, **params, skipped=skipped)
    if resplit:
        dataset = _resplit(dataset, str(parsed), resplit)
    dataset = _select_split(dataset, parsed)
    if sampling:
        dataset = subsample(dataset, sampling.get("max_identities"), sampling.get("max_images_per_identity"),
                            sampling.get("sample_seed", 0))
    if center_box is not None:
        dataset = center_boxes(dataset, center_box, f"dataset spec {str(parsed)!r}")
    return dataset


def center_box_of(spec: DatasetSpec | str) -> float | None:
    """The `center_box` a spec asks for; None for the whole photo (none given, or 1)."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    value = dict(parsed.params).get("center_box")
    return None if value is None or value == 1 else float(value)


def load_specs(specs: list[DatasetSpec | str], data_dir: str | os.PathLike | None = None,
               skipped: list[tuple[str, str]] | None = None) -> Dataset:
    """Load several specs and concatenate them; the same image_id in two specs is an error naming both.
    `skipped`: as for [`load_spec`]."""
    if not specs:
        raise ValueError(f"no dataset specs given; expected one or more of: {FORMS}")
    datasets, owner = [], {}
    for spec in specs:
        dataset = load_spec(spec, data_dir, skipped)
        for image_id in dataset["image_id"]:
            if image_id in owner:
                raise ValueError(f"image_id {image_id!r} is in both {owner[image_id]!r} and {str(spec)!r}; specs overlap")
            owner[image_id] = str(spec)
        datasets.append(dataset)
    return datasets[0] if len(datasets) == 1 else concatenate_datasets(datasets)
