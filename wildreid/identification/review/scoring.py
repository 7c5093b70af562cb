"""Ranking a gallery's individuals for one query (one or more photos of one animal), as `wildreid identify`
ranks them: `GalleryScorer` scores the gallery images of the query's species with the gallery's method
(global; local, one-vs-many LNBNN retrieval with spatial verification; fusion, over the union of both
shortlists as fitted by `wildreid calibrate`; or auto's recorded per-species choice). A gallery image
scores its best over the query photos, an individual its best image.

The "new individual" suggestion compares the best cosine with the gallery's calibrated cosine threshold,
whatever the method, as `identify` decides it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from wildreid.matching import LocalFeatures

from ..gallery_methods import GalleryScorer

THRESHOLD_UNIT = "cosine"  # what the new-individual threshold is compared with (recorded in the audit log)


@dataclass
class RankedIndividual:
    identity: str
    score: float  # the method's score: cosine (global), local score (local) or fused probability (fusion)
    probability: float | None  # calibrated P(same individual); None where the method has none
    row: int  # gallery row of the individual's best-matching image
    photo: int  # which query photo matched it best
    global_score: float  # cosine of that photo and that image


@dataclass
class Ranking:
    method: str  # the method that ranked the candidates (global when no photo has keypoints)
    candidates: list[RankedIndividual]
    suggest_new: bool | None  # None when no threshold is known
    threshold: float | None
    best_cosine: float  # over every photo and gallery image of the species: what the threshold is compared with
    note: str | None  # why the method differs from the one asked for, or why photos were left out


def rank(scorer: GalleryScorer, embeddings: np.ndarray, features: Sequence[LocalFeatures], species: str | None,
         top_k: int, threshold: float | None = None) -> Ranking:
    """Top-k individuals of `species` (all species when None) for the photos of one animal."""
    result, scored = scorer.identify_photos(embeddings, features, species, top_k=top_k, threshold=threshold)
    _, photo_of_column = scored.best_over_photos()
    image_ids = scorer.gallery.metadata["image_id"].to_numpy(dtype=object)[scored.rows]
    candidates = []
    for candidate in result.candidates:
        column = int(np.flatnonzero(image_ids == candidate.image_id)[0])
        photo = int(photo_of_column[column])
        candidates.append(RankedIndividual(candidate.identity, candidate.score, candidate.probability,
                                           int(scored.rows[column]), photo, float(scored.cosine[photo, column])))
    return Ranking(result.method, candidates, result.is_new, result.threshold, float(scored.cosine.max()), result.note)
