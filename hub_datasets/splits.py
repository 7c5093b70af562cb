"""Deterministic train/test splits for re-identification.

Every split orders identities, images or groups by `sha256(seed, key)` rather than by a library RNG or
Python's salted `hash()`, so a split depends only on the seed and the data's ids: the same on any
machine, library version or row order. Each split is computed independently within each species, so
every species keeps its share of test data in a multi-species dataset.

Strategies (`test_fraction` is a share in (0, 1)):

- `closed_set`: every identity with 2+ images keeps at least one image in train and puts
  `max(1, round(test_fraction * n))` (at most `n - 1`) images in test, so every test identity is also in
  train. **Identities with a single image stay in train** (as a test image it would have nothing to
  match). Fails when no identity has 2 images.
- `open_set`: like closed-set, plus whole identities moved to test so that about `unseen_fraction`
  of the test identities have no train image (the "new individual" case). Single-image identities may
  be picked as unseen ones (a new animal seen once); otherwise they stay in train.
- `disjoint_set`: `round(test_fraction * n_identities)` whole identities (at least 1, at most all but 1)
  go to test; train and test share no identity. Single-image identities are assigned like any other.
  Fails with fewer than 2 identities in a species.
- `group_aware`: whole groups (default the `encounter` column, e.g. a video) go to test until the test
  share of images is closest to `test_fraction`; no group straddles train and test. A row without a
  group is its own group. Fails with fewer than 2 groups in a species.
- `time_aware`: rows dated on or after a cutoff go to test, earlier ones to train; the cutoff is the
  earliest date with at most `test_fraction` of the species' images on or after it, but never later
  than the latest date (or it is given explicitly). Needs a `date` on every row and, without an
  explicit cutoff, 2+ distinct dates per species. Rows with the same date never straddle.

The functions take a `datasets.Dataset` in the [`FEATURES`] schema and return it with the `split`
column replaced by `"train"` / `"test"`; the `*_labels` variants work on plain lists.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from datasets import Dataset

from .schema import FEATURES, normalize_date, parse_date

TRAIN, TEST = "train", "test"


def stable_key(seed: int, *parts: str) -> int:
    """A 64-bit sort key from `sha256(seed, parts)`: identical on every machine and Python version."""
    text = "\x1f".join([str(int(seed)), *parts])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")


def _species_of(identity: str) -> str:
    return identity.split("/", 1)[0]


def _by_species(identities: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, identity in enumerate(identities):
        groups[_species_of(identity)].append(index)
    return groups


def _rows_by_identity(identities: Sequence[str], rows: Sequence[int]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index in rows:
        groups[identities[index]].append(index)
    return groups


def _check_nonempty(identities: Sequence[str], strategy: str) -> None:
    if len(identities) == 0:
        raise ValueError(f"{strategy} split: the dataset is empty")


def _hold_out_images(
    labels: list[str], image_ids: Sequence[str], members: list[int], test_fraction: float, seed: int
) -> None:
    """Closed-set rule for one identity: put max(1, round(f * n)) of its images (at most n - 1) in test."""
    if len(members) < 2:
        return
    n_test = min(len(members) - 1, max(1, round(test_fraction * len(members))))
    ordered = sorted(members, key=lambda i: (stable_key(seed, "image", image_ids[i]), image_ids[i]))
    for index in ordered[:n_test]:
        labels[index] = TEST


def closed_set_labels(
    identities: Sequence[str], image_ids: Sequence[str], test_fraction: float = 0.2, seed: int = 0
) -> list[str]:
    """Closed-set labels (see module docstring) for rows given by their identity and image id."""
    _check_fraction("test_fraction", test_fraction)
    _check_nonempty(identities, "closed-set")
    labels = [TRAIN] * len(identities)
    for members in _rows_by_identity(identities, range(len(identities))).values():
        _hold_out_images(labels, image_ids, members, test_fraction, seed)
    if TEST not in labels:
        raise ValueError(
            f"closed-set split: all {len(set(identities))} identities have a single image, so none can be "
            "both in train and in test; use disjoint_set instead"
        )
    return labels


def open_set_labels(
    identities: Sequence[str],
    image_ids: Sequence[str],
    test_fraction: float = 0.2,
    unseen_fraction: float = 0.5,
    seed: int = 0,
) -> list[str]:
    """Open-set labels (see module docstring): `unseen_fraction` of test identities have no train image."""
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("unseen_fraction", unseen_fraction)
    _check_nonempty(identities, "open-set")
    if max(Counter(identities).values()) < 2:
        raise ValueError(
            f"open-set split: all {len(set(identities))} identities have a single image, so no test identity can "
            "also be seen in train; use disjoint_set instead"
        )
    labels = [TRAIN] * len(identities)
    for species, rows in sorted(_by_species(identities).items()):
        members = _rows_by_identity(identities, rows)
        if len(members) < 2:
            raise ValueError(f"open-set split: species {species!r} has a single identity; it cannot be both seen and unseen")
        order = sorted(members, key=lambda name: (stable_key(seed, "identity", name), name))
        known_in_test = sum(len(members[name]) >= 2 for name in order)
        # Move identities (in hash order) to the unseen set while that brings the unseen share of test
        # identities closer to the target; always keep at least one identity in train.
        n_unseen = 0
        best_gap = abs(0.0 - unseen_fraction) if known_in_test else float("inf")
        for count, name in enumerate(order[:-1], start=1):
            known_in_test -= len(members[name]) >= 2
            gap = abs(count / (count + known_in_test) - unseen_fraction)
            if gap >= best_gap:
                break
            n_unseen, best_gap = count, gap
        for name in order[:n_unseen]:
            for index in members[name]:
                labels[index] = TEST
        for name in order[n_unseen:]:
            _hold_out_images(labels, image_ids, members[name], test_fraction, seed)
    return labels


def disjoint_set_labels(identities: Sequence[str], test_fraction: float = 0.2, seed: int = 0) -> list[str]:
    """Disjoint-set labels (see module docstring): whole identities go to test."""
    _check_fraction("test_fraction", test_fraction)
    _check_nonempty(identities, "disjoint-set")
    labels = [TRAIN] * len(identities)
    for species, rows in sorted(_by_species(identities).items()):
        members = _rows_by_identity(identities, rows)
        if len(members) < 2:
            raise ValueError(f"disjoint-set split: species {species!r} has a single identity; need at least 2")
        order = sorted(members, key=lambda name: (stable_key(seed, "identity", name), name))
        n_test = min(len(order) - 1, max(1, round(test_fraction * len(order))))
        for name in order[:n_test]:
            for index in members[name]:
                labels[index] = TEST
    return labels


def group_aware_labels(
    identities: Sequence[str],
    groups: Sequence[str | None],
    image_ids: Sequence[str],
    test_fraction: float = 0.2,
    seed: int = 0,
) -> list[str]:
    """Group-aware labels (see module docstring): whole groups go to test; rows without a group are
    their own group."""
    _check_fraction("test_fraction", test_fraction)
    _check_nonempty(identities, "group-aware")
    labels = [TRAIN] * len(identities)
    for species, rows in sorted(_by_species(identities).items()):
        members: dict[str, list[int]] = defaultdict(list)
        for index in rows:
            key = f"group\x1f{groups[index]}" if groups[index] is not None else f"image\x1f{image_ids[index]}"
            members[key].append(index)
        if len(members) < 2:
            raise ValueError(f"group-aware split: species {species!r} has a single group; need at least 2")
        order = sorted(members, key=lambda key: (stable_key(seed, key), key))
        target = test_fraction * len(rows)
        # Best-fit greedy in hash order: take a group when it brings the test size closer to the target;
        # the first group is always taken so test is never empty, the last never so train is not.
        chosen, size = [order[0]], len(members[order[0]])
        for key in order[1:-1]:
            if abs(size + len(members[key]) - target) < abs(size - target):
                chosen.append(key)
                size += len(members[key])
        if len(chosen) == len(order):
            chosen.pop()
        for key in chosen:
            for index in members[key]:
                labels[index] = TEST
    return labels


def time_aware_labels(
    identities: Sequence[str], dates: Sequence[str | None], test_fraction: float = 0.2, cutoff: str | None = None
) -> list[str]:
    """Time-aware labels (see module docstring): rows dated on or after the cutoff go to test."""
    _check_nonempty(identities, "time-aware")
    undated = [index for index, value in enumerate(dates) if value is None]
    if undated:
        raise ValueError(f"time-aware split: {len(undated)} row(s) have no date (first: row {undated[0]}); every row needs one")
    if cutoff is None:
        _check_fraction("test_fraction", test_fraction)
    parsed = [parse_date(value) for value in dates]
    fixed_cutoff = parse_date(normalize_date(cutoff)) if cutoff is not None else None
    labels = [TRAIN] * len(identities)
    for species, rows in sorted(_by_species(identities).items()):
        if fixed_cutoff is not None:
            species_cutoff = fixed_cutoff
        else:
            distinct = sorted({parsed[index] for index in rows})
            if len(distinct) < 2:
                raise ValueError(f"time-aware split: species {species!r} has a single date; need at least 2")
            counts: dict = defaultdict(int)
            for index in rows:
                counts[parsed[index]] += 1
            # Walk back from the latest date while the test share stays within the fraction; at least
            # the latest date goes to test and the earliest stays in train.
            species_cutoff, in_test = distinct[-1], counts[distinct[-1]]
            for moment in reversed(distinct[1:-1]):
                if in_test + counts[moment] > test_fraction * len(rows):
                    break
                species_cutoff, in_test = moment, in_test + counts[moment]
        for index in rows:
            if parsed[index] >= species_cutoff:
                labels[index] = TEST
    return labels


def with_split(dataset: Dataset, labels: Sequence[str]) -> Dataset:
    """Return `dataset` with its `split` column replaced by `labels`, columns in schema order."""
    if len(labels) != len(dataset):
        raise ValueError(f"got {len(labels)} split labels for {len(dataset)} rows")
    out = dataset.remove_columns("split").add_column("split", list(labels), feature=FEATURES["split"])
    return out.select_columns(list(dataset.column_names))


def _column(dataset: Dataset, name: str) -> list:
    return list(dataset[name])


def closed_set_split(dataset: Dataset, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Closed-set split: every test identity also has train images; single-image identities stay in train."""
    return with_split(dataset, closed_set_labels(_column(dataset, "identity"), _column(dataset, "image_id"), test_fraction, seed))


def open_set_split(dataset: Dataset, test_fraction: float = 0.2, unseen_fraction: float = 0.5, seed: int = 0) -> Dataset:
    """Open-set split: about `unseen_fraction` of the test identities have no train image."""
    labels = open_set_labels(_column(dataset, "identity"), _column(dataset, "image_id"), test_fraction, unseen_fraction, seed)
    return with_split(dataset, labels)


def disjoint_set_split(dataset: Dataset, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Disjoint-set split: a `test_fraction` share of each species' identities, whole, goes to test."""
    return with_split(dataset, disjoint_set_labels(_column(dataset, "identity"), test_fraction, seed))


def group_aware_split(
    dataset: Dataset, test_fraction: float = 0.2, seed: int = 0, group_column: str = "encounter"
) -> Dataset:
    """Group-aware split: no value of `group_column` (default `encounter`) straddles train and test."""
    labels = group_aware_labels(
        _column(dataset, "identity"), _column(dataset, group_column), _column(dataset, "image_id"), test_fraction, seed
    )
    return with_split(dataset, labels)


def time_aware_split(dataset: Dataset, test_fraction: float = 0.2, cutoff: str | None = None) -> Dataset:
    """Time-aware split: the latest `test_fraction` of each species' images (or those from `cutoff` on) are test."""
    return with_split(dataset, time_aware_labels(_column(dataset, "identity"), _column(dataset, "date"), test_fraction, cutoff))


SPLITTERS: dict[str, Callable[..., Dataset]] = {
    "closed_set": closed_set_split,
    "open_set": open_set_split,
    "disjoint_set": disjoint_set_split,
    "group_aware": group_aware_split,
    "time_aware": time_aware_split,
}


def split_dataset(dataset: Dataset, strategy: str, **kwargs) -> Dataset:
    """Apply the split strategy named `strategy` (a key of `SPLITTERS`) with its keyword arguments."""
    if strategy not in SPLITTERS:
        raise ValueError(f"unknown split strategy {strategy!r}; choose one of {sorted(SPLITTERS)}")
    return SPLITTERS[strategy](dataset, **kwargs)


def subsample_rows(
    identities: Sequence[str], image_ids: Sequence[str], max_identities: int | None = None,
    max_images_per_identity: int | None = None, seed: int = 0,
) -> list[int]:
    """Row indices keeping at most `max_identities` identities per species and `max_images_per_identity`
    images per identity, chosen by `stable_key` order (deterministic, and a larger cap keeps a superset)."""
    for name, value in (("max_identities", max_identities), ("max_images_per_identity", max_images_per_identity)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    rows_of = _rows_by_identity(identities, range(len(identities)))
    names = sorted(rows_of)
    kept_identities: set[str] = set()
    for members in _by_species(names).values():
        ordered = sorted((names[i] for i in members), key=lambda name: stable_key(seed, name))
        kept_identities.update(ordered[:max_identities] if max_identities else ordered)
    keep = []
    for name in kept_identities:
        rows = sorted(rows_of[name], key=lambda row: stable_key(seed, image_ids[row]))
        keep.extend(rows[:max_images_per_identity] if max_images_per_identity else rows)
    return sorted(keep)


def subsample(dataset: Dataset, max_identities: int | None = None, max_images_per_identity: int | None = None,
              seed: int = 0) -> Dataset:
    """The dataset restricted as in [`subsample_rows`] (e.g. few-shot training sets, bounded test sets)."""
    rows = subsample_rows(_column(dataset, "identity"), _column(dataset, "image_id"), max_identities,
                          max_images_per_identity, seed)
    return dataset if len(rows) == len(dataset) else dataset.select(rows)
