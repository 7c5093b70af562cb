"""Validation figures that fusion and `auto` choose by: leave-one-out top-1 and mAP of a score matrix.

Computed here with scikit-learn's label-ranking average precision (per query: the mean, over its
relevant gallery images, of the precision at their rank; ties count against the query, as in
`wildreid.evaluation.metrics`), so matching depends on no evaluation code.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import label_ranking_average_precision_score


def leave_one_out_figures(scores: np.ndarray, identities: np.ndarray) -> dict[str, float]:
    """{"top1", "map"} over the queries that have another image of their individual in the set; the
    diagonal of `scores` (a query against itself) is ignored."""
    return ranking_figures(scores, identities, identities, self_columns=np.arange(len(identities)))


def ranking_figures(scores: np.ndarray, query_identities: np.ndarray, gallery_identities: np.ndarray, *,
                    self_columns: np.ndarray | None = None) -> dict[str, float]:
    """{"top1", "map"} of a (Q, G) score matrix over the queries with a relevant gallery image.
    `self_columns[q]` (optional) is query q's own column, ignored (leave-one-out on a subset of queries)."""
    query_identities, gallery_identities = np.asarray(query_identities), np.asarray(gallery_identities)
    relevant = query_identities[:, None] == gallery_identities[None, :]
    rows = np.arange(len(query_identities))
    if self_columns is not None:
        relevant[rows, self_columns] = False
    queries = np.flatnonzero(relevant.any(axis=1))
    if len(queries) == 0:
        raise ValueError("no query has a relevant gallery image: nothing to measure")
    scores = np.array(scores[queries], dtype=np.float64)
    finite = np.isfinite(scores)
    if self_columns is not None:
        finite[np.arange(len(queries)), self_columns[queries]] = False
    # sklearn needs finite scores: unscored pairs go just below the lowest scored one, self below those.
    floor = scores[finite].min() - 1.0 if finite.any() else 0.0
    scores[~finite] = floor
    if self_columns is not None:
        scores[np.arange(len(queries)), self_columns[queries]] = floor - 1.0
    relevant = relevant[queries]
    others = ~relevant
    if self_columns is not None:
        others[np.arange(len(queries)), self_columns[queries]] = False
    # Top-1 is right when a relevant image beats every other one outright (ties count against the query).
    best_relevant = np.where(relevant, scores, -np.inf).max(axis=1)
    best_other = np.where(others, scores, -np.inf).max(axis=1)
    return {"top1": float(np.mean(best_relevant > best_other)),
            "map": float(label_ranking_average_precision_score(relevant, scores))}
