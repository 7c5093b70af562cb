"""The ranking core of the retrieval metrics (`metrics`): where each query's correct gallery items rank,
chunk by chunk, with pessimistic ties and gallery items a query must not see (itself in leave-one-out, its
own encounter's photos when same-encounter matches are excluded).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChunkRanks:
    first_hit: np.ndarray  # 0-based pessimistic rank of the first correct item, -1 when none
    average_precision: np.ndarray  # NaN when the query has no correct item
    top_score: np.ndarray
    n_relevant: np.ndarray


def _count_below(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each i, how many entries of ``sorted_rows[rows[i]]`` (ascending) are < ``values[i]``.

    A binary search run for all i at once: numpy's searchsorted only takes one sorted array.
    """
    n_columns = sorted_rows.shape[1]
    flat = sorted_rows.reshape(-1)
    offsets = rows * n_columns
    low = np.zeros(len(values), dtype=np.int64)
    high = np.full(len(values), n_columns, dtype=np.int64)
    while True:
        active = low < high
        if not active.any():
            return low
        middle = (low + high) // 2
        below = flat[offsets + np.minimum(middle, n_columns - 1)] < values
        low = np.where(active & below, middle + 1, low)
        high = np.where(active & ~below, middle, high)


def rank_chunk(scores: np.ndarray, relevant: np.ndarray, excluded: np.ndarray | None) -> ChunkRanks:
    """Rank one chunk of queries; ``scores`` and ``relevant`` are (c, G) and modified in place.

    ``excluded`` (c, G) bool marks the gallery items each query must not see. Only the correct items'
    ranks are needed, so each row's scores are sorted by value (a SIMD sort, several times faster than
    argsort) and every correct item is located in its row by binary search.
    """
    n_rows, n_gallery = scores.shape
    if excluded is not None:
        # Parked at -inf and marked incorrect, they can only tie with correct items that also score
        # -inf; the correction below takes them out of those items' ranks.
        scores[excluded] = -np.inf
        relevant[excluded] = False
    sorted_scores = np.sort(scores, axis=1)
    hits = np.flatnonzero(relevant)
    hit_rows = hits // n_gallery
    hit_scores = scores.reshape(-1)[hits]
    # Correct items of each row from best to worst score.
    order = np.lexsort((-hit_scores, hit_rows))
    hit_rows, hit_scores = hit_rows[order], hit_scores[order]
    n_relevant = np.bincount(hit_rows, minlength=n_rows)
    row_first = np.concatenate([[0], np.cumsum(n_relevant)[:-1]])
    position = np.arange(len(hit_rows)) - row_first[hit_rows] + 1  # k-th correct item of its row
    # Correct items scoring >= the k-th one: up to the last of its run of equal scores.
    last_of_run = np.ones(len(hit_rows), dtype=bool)
    last_of_run[:-1] = (hit_rows[:-1] != hit_rows[1:]) | (hit_scores[:-1] != hit_scores[1:])
    run_last = np.flatnonzero(last_of_run)
    correct_at_least = run_last[np.searchsorted(run_last, np.arange(len(hit_rows)))] - row_first[hit_rows] + 1
    at_least = n_gallery - _count_below(sorted_scores, hit_rows, hit_scores)
    wrong_at_least = at_least - correct_at_least
    if excluded is not None:
        wrong_at_least -= np.where(hit_scores == -np.inf, excluded.sum(axis=1)[hit_rows], 0)
    # Pessimistic ties: every incorrect item scoring >= the k-th correct one ranks before it.
    rank = position + wrong_at_least
    has_hit = n_relevant > 0
    first_hit = np.full(n_rows, -1, dtype=np.int64)
    first_hit[has_hit] = wrong_at_least[row_first[has_hit]]
    with np.errstate(invalid="ignore", divide="ignore"):
        average_precision = np.bincount(hit_rows, weights=position / rank, minlength=n_rows) / n_relevant
    average_precision[~has_hit] = np.nan
    return ChunkRanks(first_hit, average_precision, sorted_scores[:, -1].astype(np.float64), n_relevant)


def scan(
    chunk_scores: Callable[[int, int], np.ndarray],
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    leave_one_out: bool,
    step: int,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
) -> ChunkRanks:
    """Rank all queries, ``chunk_scores(start, stop)`` giving a fresh (stop - start, G) score block.

    ``groups``: (query, gallery) group codes (an encounter each, -1 for none); a query does not see the
    gallery items of its own group.
    """
    parts = []
    for start in range(0, len(query_codes), step):
        stop = min(start + step, len(query_codes))
        relevant = query_codes[start:stop, None] == gallery_codes[None, :]
        excluded = None
        if leave_one_out or groups is not None:
            excluded = np.zeros(relevant.shape, dtype=bool)
            if leave_one_out:
                excluded[np.arange(stop - start), np.arange(start, stop)] = True
            if groups is not None:
                query_groups = groups[0][start:stop, None]
                excluded |= (query_groups == groups[1][None, :]) & (query_groups >= 0)
        parts.append(rank_chunk(chunk_scores(start, stop), relevant, excluded))
    return ChunkRanks(*(np.concatenate([getattr(p, f) for p in parts]) for f in ChunkRanks.__dataclass_fields__))
