"""Local features of an evaluation set: keypoints (SIFT or ALIKED) of every row's annotated crop (the shared
preprocessing's crop), aligned with the dataset rows; unreadable images are reported and skipped.
`method_protocols` scores them with any method."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset

from ..embedding import undecoded
from ..matching import LocalFeatureExtractor, LocalFeatures


@dataclass
class LocalSet:
    """Local features of the readable rows of a dataset, with their identities and species."""

    features: list[LocalFeatures]
    rows: np.ndarray
    identities: np.ndarray
    species: np.ndarray
    failures: list[dict]


def extract_local_set(dataset: Dataset, extractor: LocalFeatureExtractor, *, num_workers: int | None = None,
                      progress: bool = True) -> LocalSet:
    """Keypoints of every row's annotated crop; unreadable images are reported and skipped."""
    raw = undecoded(dataset)
    features, failures = extractor.extract_paths(list(raw["image"]), list(raw["bbox"]), [t or 0.0 for t in raw["theta"]],
                                                 num_workers=num_workers, progress=progress)
    ok = np.array([f is not None for f in features], dtype=bool)
    return LocalSet(
        [f for f in features if f is not None], np.flatnonzero(ok),
        np.asarray(dataset["identity"], dtype=object)[ok], np.asarray(dataset["species"], dtype=object)[ok],
        [f.to_dict() for f in failures],
    )
