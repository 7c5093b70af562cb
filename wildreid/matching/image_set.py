"""`ImageSet`: what every scoring method scores, the readable images of one set aligned row by row.

Its own module so that the methods (`methods`) and the fusion they build on (`union_fusion`) both import
it from below, and data flows one way: image_set -> union_fusion -> methods.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .keypoints import LocalFeatures


@dataclass
class ImageSet:
    """What the methods score: the readable images of one set, aligned row by row."""

    identities: np.ndarray
    species: np.ndarray
    embeddings: np.ndarray | None = None  # (N, D) L2-normalised; needed by global, fusion, auto
    local: list[LocalFeatures] | None = None  # needed by the local methods, fusion, auto
    extractor_config: dict[str, Any] = field(default_factory=dict)
    encounters: np.ndarray | None = None  # (N,) sighting of each image (None: unknown); evaluation may exclude them

    def __len__(self) -> int:
        return len(self.identities)

    def part(self, mask: np.ndarray) -> "ImageSet":
        mask = np.asarray(mask, dtype=bool)
        return ImageSet(self.identities[mask], self.species[mask],
                        None if self.embeddings is None else self.embeddings[mask],
                        None if self.local is None else [f for f, keep in zip(self.local, mask) if keep],
                        self.extractor_config, None if self.encounters is None else self.encounters[mask])

    def without_keypoints(self) -> np.ndarray:
        """(N,) True for images without a single local feature (blank, tiny or featureless crops)."""
        return np.array([len(features) == 0 for features in self.local or []], dtype=bool)

    def require(self, what: str, method: str) -> None:
        if what == "embeddings" and self.embeddings is None:
            raise ValueError(f"method {method!r} needs embeddings: give a model")
        if what == "local" and self.local is None:
            raise ValueError(f"method {method!r} needs local features")
