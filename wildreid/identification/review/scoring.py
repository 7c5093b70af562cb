"""Ranking a gallery's individuals for one query (one or more photos of one animal) by a method.

- global: cosine of the embeddings; an individual scores its best (photo, gallery image) pair; the
  probability comes from the gallery's score calibrator (`wildreid calibrate`), the "new individual"
  suggestion from its calibrated cosine threshold.
- fusion: the global top-`shortlist` gallery images are re-scored by verified local matches (SIFT
  inliers) and both scores are turned into one probability by a `FusionMatcher` (mean of the two
  calibrated probabilities); "new individual" is suggested when the best probability is below
  `new_probability`.

Search is exact (one matrix product over the allowed rows): a review query is one animal, and the
product over 100k x 512 floats takes milliseconds, with no index to rebuild after each decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from wildreid.matching import Calibrator, FusionMatcher, LocalFeatures, LocalMatcher

METHODS = ("global", "fusion")


@dataclass
class RankedIndividual:
    identity: str
    score: float  # the method's score: cosine (global) or fused probability (fusion)
    probability: float | None  # calibrated P(same individual); None when the gallery is not calibrated
    row: int  # gallery row of the individual's best-matching image
    photo: int  # which query photo matched it best
    global_score: float
    local_inliers: int | None  # verified local matches of (photo, row); None for the global method


@dataclass
class Ranking:
    method: str
    candidates: list[RankedIndividual]
    suggest_new: bool | None  # None when no threshold is known
    threshold: float | None
    threshold_unit: str  # what the threshold is compared with


def rank_global(query_embeddings: np.ndarray, gallery_embeddings: np.ndarray, identities: np.ndarray,
                rows: np.ndarray, top_k: int, *, calibrator: Calibrator | None = None,
                threshold: float | None = None) -> Ranking:
    """Top-k individuals among gallery `rows` by their best cosine with any query photo."""
    best, photo = _best_over_photos(query_embeddings @ gallery_embeddings[rows].T)
    candidates = []
    for position in _best_row_per_identity(best, identities[rows], top_k):
        score = float(best[position])
        probability = None if calibrator is None else float(calibrator.predict([score])[0])
        candidates.append(RankedIndividual(str(identities[rows[position]]), score, probability,
                                           int(rows[position]), int(photo[position]), score, None))
    suggest = None if threshold is None or not candidates else bool(candidates[0].score < threshold)
    return Ranking("global", candidates, suggest, threshold, "cosine")


def rank_fusion(query_embeddings: np.ndarray, query_features: Sequence[LocalFeatures],
                gallery_embeddings: np.ndarray, identities: np.ndarray, rows: np.ndarray, top_k: int, *, fusion: FusionMatcher,
                matcher: LocalMatcher, feature_of_row, new_probability: float = 0.5) -> Ranking:
    """Top-k individuals after re-scoring the global shortlist with verified local matches.

    feature_of_row: gallery row -> LocalFeatures (from the gallery's keypoint cache).
    """
    global_best, _ = _best_over_photos(query_embeddings @ gallery_embeddings[rows].T)
    shortlist = np.argsort(-global_best, kind="stable")[: fusion.shortlist]
    reference = [feature_of_row(int(rows[i])) for i in shortlist]
    # (photos, shortlist) inlier counts, in this process: a shortlist of tens of pairs is faster than
    # starting worker processes.
    inliers = matcher.score(list(query_features), reference, num_workers=1, progress=False)
    local_best, local_photo = _best_over_photos(inliers)
    fused = fusion.fuse(global_best[shortlist], local_best)
    candidates = []
    for position in _best_row_per_identity(fused, identities[rows[shortlist]], top_k):
        row = int(rows[shortlist[position]])
        probability = float(fused[position])
        candidates.append(RankedIndividual(str(identities[row]), probability, probability, row,
                                           int(local_photo[position]), float(global_best[shortlist[position]]),
                                           int(local_best[position])))
    suggest = bool(candidates[0].probability < new_probability) if candidates else None
    return Ranking("fusion", candidates, suggest, new_probability, "fused probability")


def _best_over_photos(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best score per column over the query photos, the photo that gave it)."""
    photo = scores.argmax(axis=0)
    return scores[photo, np.arange(scores.shape[1])], photo


def _best_row_per_identity(scores: np.ndarray, identities: np.ndarray, top_k: int) -> list[int]:
    """Positions of each identity's best-scoring entry, for the top_k identities, best first."""
    chosen, seen = [], set()
    for position in np.argsort(-scores, kind="stable"):
        if identities[position] in seen:
            continue
        seen.add(identities[position])
        chosen.append(int(position))
        if len(chosen) == top_k:
            break
    return chosen


def fit_fusion_on_gallery(gallery_embeddings: np.ndarray, identities: np.ndarray, features: Sequence[LocalFeatures],
                          matcher: LocalMatcher, *, shortlist: int = 30, max_images: int = 200, seed: int = 0,
                          num_workers: int | None = 1) -> FusionMatcher:
    """Calibrate fusion on the gallery's own labelled images, each leaving itself out (the gallery
    holds known individuals only, so this is the validation data a reviewer has).

    At most `max_images` images (of individuals with >= 2 of them) are used, to bound start-up time.
    """
    labels = np.asarray(identities)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    usable = np.flatnonzero(counts[inverse] >= 2)
    if len(usable) < 4:
        raise ValueError(f"fusion calibration needs individuals with >= 2 gallery images; only {len(usable)} "
                         "images qualify")
    sample = np.sort(np.random.default_rng(seed).permutation(usable)[:max_images])
    sample_features = [features[i] for i in sample]
    similarity = gallery_embeddings[sample] @ gallery_embeddings[sample].T

    def local(candidates: np.ndarray) -> np.ndarray:
        return matcher.score(sample_features, sample_features, candidates, num_workers=num_workers, progress=False)

    fusion = FusionMatcher(shortlist=min(shortlist, len(sample) - 1))
    return fusion.fit(similarity, local, labels[sample], labels[sample], leave_one_out=True)
