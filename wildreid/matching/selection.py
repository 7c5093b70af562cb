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
    identities = np.asarray(identities)
    relevant = identities[:, None] == identities[None, :]
    np.fill_diagonal(relevant, False)
    queries = np.flatnonzero(relevant.any(axis=1))
    if len(queries) == 0:
        raise ValueError("no query has another image of its individual: nothing to validate on")
    scores = np.array(scores[queries], dtype=np.float64)
    scores[np.arange(len(queries)), queries] = -np.inf
    finite = np.isfinite(scores)
    # sklearn needs finite scores: unscored pairs go just below the lowest scored one.
    floor = scores[finite].min() - 1.0 if finite.any() else 0.0
    scores[~finite] = floor
    scores[np.arange(len(queries)), queries] = floor - 1.0  # self ranks last and is not relevant
    best = scores.max(axis=1, keepdims=True)
    top_is_right = (relevant[queries] & (scores == best)).any(axis=1) & ((scores == best).sum(axis=1) == 1)
    return {"top1": float(top_is_right.mean()),
            "map": float(label_ranking_average_precision_score(relevant[queries], scores))}
