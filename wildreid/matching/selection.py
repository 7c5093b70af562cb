"""Validation figures that fusion and `auto` choose by: leave-one-out top-1 and mAP of a score matrix.

Computed here with scikit-learn's label-ranking average precision (per query: the mean, over its
relevant gallery images, of the precision at their rank; ties count against the query, as in
`wildreid.evaluation.metrics`), so matching depends on no evaluation code.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import label_ranking_average_precision_score


def leave_one_out_figures(scores: np.ndarray, identities: np.ndarray,
                          groups: np.ndarray | None = None) -> dict[str, float]:
    """{"top1", "map"} over the queries that have another image of their individual in the set; the
    diagonal of `scores` (a query against itself) is ignored, and with `groups` (each image's encounter;
    None or "" = none) so is every other image of the query's own encounter."""
    excluded = np.eye(len(identities), dtype=bool)
    if groups is not None:
        excluded |= same_group_pairs(groups)
    return ranking_figures(scores, identities, identities, excluded=excluded)


def known_groups(groups: np.ndarray) -> np.ndarray:
    """(N,) bool: the image's encounter is recorded (None or "" is none)."""
    return np.array([group is not None and group != "" for group in groups], dtype=bool)


def same_group_pairs(groups: np.ndarray) -> np.ndarray:
    """(N, N) bool: both images belong to one known encounter (None or "" is none)."""
    groups = np.asarray(groups, dtype=object)
    known = known_groups(groups)
    return (groups[:, None] == groups[None, :]) & known[:, None] & known[None, :]


def validation_pairs(identities: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """(N, N) bool: two images of one individual, not one image with itself, and with `groups` not of one
    encounter: the pairs a leave-one-out fit can learn from (none: nothing to fit or choose by)."""
    identities = np.asarray(identities)
    pairs = identities[:, None] == identities[None, :]
    np.fill_diagonal(pairs, False)
    return pairs if groups is None else pairs & ~same_group_pairs(groups)


def ranking_figures(scores: np.ndarray, query_identities: np.ndarray, gallery_identities: np.ndarray, *,
                    excluded: np.ndarray | None = None) -> dict[str, float]:
    """{"top1", "map"} of a (Q, G) score matrix over the queries with a relevant gallery image.
    `excluded` (optional, (Q, G) bool) marks pairs to ignore: a query's own column in leave-one-out, or the
    other photos of its encounter; they rank below every other image and count neither way."""
    query_identities, gallery_identities = np.asarray(query_identities), np.asarray(gallery_identities)
    relevant = query_identities[:, None] == gallery_identities[None, :]
    if excluded is not None:
        relevant &= ~excluded
    queries = np.flatnonzero(relevant.any(axis=1))
    if len(queries) == 0:
        raise ValueError("no query has a relevant gallery image: nothing to measure")
    scores = np.array(scores[queries], dtype=np.float64)
    ignored = np.zeros_like(scores, dtype=bool) if excluded is None else excluded[queries]
    finite = np.isfinite(scores) & ~ignored
    # sklearn needs finite scores: unscored pairs go just below the lowest scored one, ignored ones below those.
    floor = scores[finite].min() - 1.0 if finite.any() else 0.0
    scores[~np.isfinite(scores)] = floor
    scores[ignored] = floor - 1.0
    relevant = relevant[queries]
    others = ~relevant & ~ignored
    # Top-1 is right when a relevant image beats every other one outright (ties count against the query).
    best_relevant = np.where(relevant, scores, -np.inf).max(axis=1)
    best_other = np.where(others, scores, -np.inf).max(axis=1)
    return {"top1": float(np.mean(best_relevant > best_other)),
            "map": float(label_ranking_average_precision_score(relevant, scores))}
