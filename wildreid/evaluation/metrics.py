"""Re-identification retrieval metrics: CMC top-k and mAP, and the per-query top-1 matches that the
open-set metrics (`wildreid.evaluation.open_set`) consume.

Conventions shared by every function here:

* Scores are "higher = more similar". Embeddings are compared by cosine similarity after L2
  normalisation (re-normalised here, so un-normalised embeddings such as MiewID's BN output work).
* Ties are resolved pessimistically: a correct gallery item that scores the same as incorrect ones
  ranks after all of them. A model that gives every pair the same score therefore lands at chance
  (its first correct match ranks after every incorrect item) instead of looking perfect.
* Leave-one-out (no gallery): each query is ranked against all other queries, itself excluded;
  queries whose identity has no other image are skipped and counted in ``n_skipped``, as in MiewID.
* Query vs gallery (closed set): a query whose identity is absent from the gallery cannot be matched,
  so it counts as a miss in the CMC curve; it is left out of mAP, where AP is undefined, and counted
  in ``n_unmatched``.
* Same-encounter matches excluded (``query_groups`` / ``gallery_groups``, e.g. the `encounter` column): a
  query does not see the gallery photos of its own encounter (sighting, video, session), which are
  often easy matches of the background or of the same moment; as in Market-1501's same-camera
  "junk" images. A query whose individual is in the gallery only through its own encounter cannot be
  answered then: it is skipped and counted in ``n_skipped``. A group of None or "" is no encounter.
* Work is chunked over queries, so only ``chunk_size x n_gallery`` scores exist at any time and a
  100k x 100k evaluation fits in a few hundred MB. Cosine scores are float32 matrix products; the
  BLAS kernel, hence the last bit of a score, can depend on the chunk shape, which can only reorder
  items whose scores agree to ~1e-7.

One ranking core (`ranking.rank_chunk`) serves embeddings and precomputed similarity matrices alike.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .open_set import Top1Matches
from .ranking import ChunkRanks, scan

DEFAULT_TOPK = (1, 5, 10, 20)
# Scores held per chunk when chunk_size is None: ~4M scores keep the ranking's working arrays
# (scores, sorted scores, correct-item mask) near 40 MB whatever the gallery size.
_AUTO_CHUNK_SCORES = 1 << 22


# ----------------------------------------------------------------------------- input checks


def _as_labels(labels: Any, name: str) -> np.ndarray:
    """Labels as a 1-D int or str array (object arrays of one of those types are converted)."""
    array = labels if isinstance(labels, np.ndarray) else np.asarray(list(labels))
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of identity labels, got shape {array.shape}")
    if array.dtype.kind == "O":
        if all(isinstance(v, str) for v in array):
            array = array.astype(str)
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in array):
            array = array.astype(np.int64)
    if array.dtype.kind not in "iuU" and len(array):
        raise ValueError(f"{name} must hold integer or string identity labels (one type), got dtype {array.dtype}")
    return array


def _encode_labels(query_labels: np.ndarray, gallery_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map labels to integer codes shared by query and gallery (comparisons become integer ==)."""
    query_kind = "str" if query_labels.dtype.kind == "U" else "int"
    gallery_kind = "str" if gallery_labels.dtype.kind == "U" else "int"
    if query_kind != gallery_kind and len(query_labels) and len(gallery_labels):
        # Concatenating would coerce 1 to "1" and silently merge or split identities.
        raise ValueError(
            f"query labels are {query_kind} but gallery labels are {gallery_kind}; use one label type for both"
        )
    _, codes = np.unique(np.concatenate([query_labels, gallery_labels]), return_inverse=True)
    codes = codes.reshape(-1)
    return codes[: len(query_labels)], codes[len(query_labels) :]


def _normalised_embeddings(embeddings: Any, name: str) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, dim), got shape {array.shape}")
    if not np.isfinite(array).all():
        row = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise ValueError(f"{name} row {row} holds NaN or inf")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        row = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise ValueError(f"{name} row {row} is all zeros; cosine similarity is undefined for it")
    return array / norms


def _check_lengths(n_rows: int, labels: np.ndarray, what: str, label_name: str) -> None:
    if n_rows != len(labels):
        raise ValueError(f"{what} has {n_rows} rows but {label_name} has {len(labels)} labels")


def _check_topk(topk: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(k) for k in topk)
    if not values or any(k < 1 for k in values):
        raise ValueError(f"topk must be a non-empty sequence of positive integers, got {topk!r}")
    return tuple(sorted(set(values)))


def _chunk_rows(chunk_size: int | None, n_gallery: int) -> int:
    if chunk_size is None:
        return max(1, _AUTO_CHUNK_SCORES // max(n_gallery, 1))
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def _encode_groups(query_groups: Sequence | None, gallery_groups: Sequence | None, n_queries: int, n_gallery: int
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """Shared integer codes of the query and gallery groups (-1: no group), or None when not given."""
    if query_groups is None and gallery_groups is None:
        return None
    if query_groups is None or gallery_groups is None:
        raise ValueError("give query_groups and gallery_groups together (leave-one-out: gallery_groups = query_groups)")
    query_groups, gallery_groups = list(query_groups), list(gallery_groups)
    _check_lengths(n_queries, np.asarray(query_groups, dtype=object), "the queries", "query_groups")
    _check_lengths(n_gallery, np.asarray(gallery_groups, dtype=object), "the gallery", "gallery_groups")
    named = sorted({str(g) for g in query_groups + gallery_groups if g is not None and str(g) != ""})
    code = {name: i for i, name in enumerate(named)}

    def codes(groups: list) -> np.ndarray:
        return np.array([code[str(g)] if g is not None and str(g) != "" else -1 for g in groups], dtype=np.int64)

    return codes(query_groups), codes(gallery_groups)


# ----------------------------------------------------------------------------- ranking


def _cosine_blocks(queries: np.ndarray, gallery: np.ndarray) -> Callable[[int, int], np.ndarray]:
    return lambda start, stop: queries[start:stop] @ gallery.T


def _similarity_blocks(similarity: Any) -> Callable[[int, int], np.ndarray]:
    # float32 keeps float32/float16/small-int scores exact; int32/int64/float64 scores need float64.
    dtype = np.result_type(np.asarray(similarity[:0]).dtype, np.float32)

    def block(start: int, stop: int) -> np.ndarray:
        # A copy: the ranking writes into it, and a memory-mapped matrix is only read block by block.
        scores = np.array(similarity[start:stop], dtype=dtype)
        if np.isnan(scores).any():
            row, column = (int(v) for v in np.argwhere(np.isnan(scores))[0])
            raise ValueError(f"similarity[{start + row}, {column}] is NaN")
        return scores

    return block


class NoAnswerableQueryError(ValueError):
    """No query has a relevant gallery image (after any same-encounter exclusion): the metrics are undefined."""


def _summarise(ranks: ChunkRanks, query_codes: np.ndarray, gallery_codes: np.ndarray, topk: tuple[int, ...],
               leave_one_out: bool) -> dict:
    has_match = ranks.n_relevant > 0
    # Closed set: a query whose individual is absent from the gallery is a miss; one whose individual is there
    # only in its own encounter (excluded) cannot be answered and is skipped, as are leave-one-out singletons.
    evaluated = has_match if leave_one_out else has_match | ~np.isin(query_codes, gallery_codes)
    n_candidates = len(gallery_codes) - leave_one_out
    if not has_match.any():
        if leave_one_out:
            raise NoAnswerableQueryError(
                "no query has another image of its identity (outside its own encounter); leave-one-out needs "
                "identities with >= 2 images"
            )
        if np.isin(query_codes, gallery_codes).any():  # present, but only in the queries' own encounters
            raise NoAnswerableQueryError("no query has an image of its identity in the gallery outside its own encounter")
        raise NoAnswerableQueryError(
            "no query identity occurs in the gallery, so closed-set metrics are undefined "
            "(use open_set_metrics for new-individual detection)"
        )
    first_hit = ranks.first_hit[evaluated]
    depth = min(max(topk), n_candidates)
    hits_at_rank = np.bincount(first_hit[(first_hit >= 0) & (first_hit < depth)], minlength=depth)
    # Integer counts divided once: the curve does not depend on summation order.
    cmc = np.cumsum(hits_at_rank) / len(first_hit)
    result: dict[str, Any] = {f"top{k}": float(cmc[min(k, depth) - 1]) for k in topk}
    result.update(
        {
            "map": float(np.mean(ranks.average_precision[has_match])),
            "n_queries": int(evaluated.sum()),
            "n_identities": int(len(np.unique(query_codes[evaluated]))),
            "n_skipped": int((~evaluated).sum()),
            "n_unmatched": int((evaluated & ~has_match).sum()),
            "n_gallery": int(n_candidates + (1 if leave_one_out else 0)),
            "cmc": [float(v) for v in cmc],
        }
    )
    return result


# ----------------------------------------------------------------------------- closed-set API


def _prepare_embeddings(
    query_embeddings: Any, query_labels: Sequence, gallery_embeddings: Any, gallery_labels: Sequence | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalised queries and gallery with shared label codes; no gallery means the queries themselves."""
    query_labels = _as_labels(query_labels, "query_labels")
    queries = _normalised_embeddings(query_embeddings, "query_embeddings")
    _check_lengths(len(queries), query_labels, "query_embeddings", "query_labels")
    if len(queries) == 0:
        raise ValueError("query_embeddings is empty: nothing to evaluate")
    if gallery_embeddings is None:
        gallery, gallery_labels = queries, query_labels
    else:
        if gallery_labels is None:
            raise ValueError("gallery_embeddings given without gallery_labels")
        gallery_labels = _as_labels(gallery_labels, "gallery_labels")
        gallery = _normalised_embeddings(gallery_embeddings, "gallery_embeddings")
        _check_lengths(len(gallery), gallery_labels, "gallery_embeddings", "gallery_labels")
        if len(gallery) == 0:
            raise ValueError("gallery_embeddings is empty: nothing to match against")
        if gallery.shape[1] != queries.shape[1]:
            raise ValueError(
                f"query embeddings are {queries.shape[1]}-d but gallery embeddings are {gallery.shape[1]}-d"
            )
    return (queries, gallery, *_encode_labels(query_labels, gallery_labels))


def _prepare_similarity(
    similarity: Any, query_labels: Sequence, gallery_labels: Sequence
) -> tuple[Any, np.ndarray, np.ndarray]:
    """A row-sliceable (Q, G) score matrix (numpy array, memmap...) checked against the labels."""
    query_labels = _as_labels(query_labels, "query_labels")
    gallery_labels = _as_labels(gallery_labels, "gallery_labels")
    if len(query_labels) == 0:
        raise ValueError("query_labels is empty: nothing to evaluate")
    if len(gallery_labels) == 0:
        raise ValueError("gallery_labels is empty: nothing to match against")
    if not hasattr(similarity, "shape") or not hasattr(similarity, "__getitem__"):
        similarity = np.asarray(similarity)
    if len(similarity.shape) != 2:
        raise ValueError(f"similarity must be a 2-D (queries, gallery) matrix, got shape {tuple(similarity.shape)}")
    if tuple(similarity.shape) != (len(query_labels), len(gallery_labels)):
        raise ValueError(
            f"similarity has shape {tuple(similarity.shape)} but there are {len(query_labels)} query labels "
            f"and {len(gallery_labels)} gallery labels"
        )
    if np.asarray(similarity[:0]).dtype.kind not in "fiu":
        raise ValueError(f"similarity must be numeric, got dtype {np.asarray(similarity[:0]).dtype}")
    return (similarity, *_encode_labels(query_labels, gallery_labels))


def retrieval_metrics(
    query_embeddings: Any,
    query_labels: Sequence,
    gallery_embeddings: Any = None,
    gallery_labels: Sequence | None = None,
    *,
    topk: Sequence[int] = DEFAULT_TOPK,
    chunk_size: int | None = None,
    query_groups: Sequence | None = None,
    gallery_groups: Sequence | None = None,
) -> dict:
    """CMC top-k and mAP of cosine-similarity retrieval.

    Args:
        query_embeddings: (Q, D) embeddings; re-L2-normalised here.
        query_labels: (Q,) identity labels (int or str).
        gallery_embeddings: (G, D) embeddings, or None for leave-one-out within the queries.
        gallery_labels: (G,) labels; required exactly when ``gallery_embeddings`` is given.
        topk: ranks reported as ``top{k}``; a k beyond the gallery size reports the full-gallery value.
        chunk_size: queries scored at once (None: as many as keep a chunk near 4M scores).
        query_groups, gallery_groups: (Q,) and (G,) encounters (None or "": none); a query does not see
            the gallery items of its own encounter. Leave-one-out: give both, equal.

    Returns:
        ``top{k}`` for each k and ``map`` (fractions in [0, 1]), ``cmc`` (list up to
        ``min(max(topk), gallery size)``), ``n_queries`` (queries in the CMC), ``n_identities``
        (distinct identities among them), ``n_skipped`` (leave-one-out singletons),
        ``n_unmatched`` (closed-set queries with no correct gallery item: CMC misses, not in mAP),
        ``n_gallery``.
    """
    topk = _check_topk(topk)
    leave_one_out = gallery_embeddings is None
    if leave_one_out and gallery_labels is not None:
        raise ValueError("gallery_labels given without gallery_embeddings")
    queries, gallery, query_codes, gallery_codes = _prepare_embeddings(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels
    )
    groups = _encode_groups(query_groups, gallery_groups, len(queries), len(gallery))
    ranks = scan(_cosine_blocks(queries, gallery), query_codes, gallery_codes, leave_one_out,
                 _chunk_rows(chunk_size, len(gallery)), groups)
    return _summarise(ranks, query_codes, gallery_codes, topk, leave_one_out)


def retrieval_metrics_from_similarity(
    similarity: Any,
    query_labels: Sequence,
    gallery_labels: Sequence | None = None,
    *,
    leave_one_out: bool = False,
    topk: Sequence[int] = DEFAULT_TOPK,
    chunk_size: int | None = None,
    query_groups: Sequence | None = None,
    gallery_groups: Sequence | None = None,
) -> dict:
    """The metrics of :func:`retrieval_metrics` from a precomputed (Q, G) score matrix.

    Higher scores mean more similar (local-feature match counts, fused scores...). With
    ``leave_one_out=True`` the matrix is square over one set (``gallery_labels`` omitted or equal to
    ``query_labels``) and its diagonal is ignored. NaN scores are rejected; +-inf are allowed.
    ``query_groups`` / ``gallery_groups``: as in :func:`retrieval_metrics`.
    """
    topk = _check_topk(topk)
    if leave_one_out:
        if gallery_labels is not None and not np.array_equal(np.asarray(gallery_labels), np.asarray(query_labels)):
            raise ValueError("leave_one_out=True needs gallery_labels to be omitted or equal to query_labels")
        gallery_labels = query_labels
    elif gallery_labels is None:
        raise ValueError("gallery_labels is required unless leave_one_out=True")
    similarity, query_codes, gallery_codes = _prepare_similarity(similarity, query_labels, gallery_labels)
    groups = _encode_groups(query_groups, gallery_groups, len(query_codes), len(gallery_codes))
    ranks = scan(_similarity_blocks(similarity), query_codes, gallery_codes, leave_one_out,
                 _chunk_rows(chunk_size, len(gallery_codes)), groups)
    return _summarise(ranks, query_codes, gallery_codes, topk, leave_one_out)


# ----------------------------------------------------------------------------- top-1 matches


def _top1(ranks: ChunkRanks, query_labels: Sequence) -> Top1Matches:
    labels = _as_labels(query_labels, "query_labels")
    return Top1Matches(ranks.top_score, ranks.first_hit == 0, ranks.n_relevant > 0, labels)


def top1_matches(
    query_embeddings: Any,
    query_labels: Sequence,
    gallery_embeddings: Any,
    gallery_labels: Sequence,
    *,
    chunk_size: int | None = None,
) -> Top1Matches:
    """Nearest gallery item of each query by cosine similarity (the open-set metrics' input)."""
    if gallery_embeddings is None or gallery_labels is None:
        raise ValueError("open-set matching needs a gallery (gallery_embeddings and gallery_labels)")
    queries, gallery, query_codes, gallery_codes = _prepare_embeddings(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels
    )
    ranks = scan(_cosine_blocks(queries, gallery), query_codes, gallery_codes, False, _chunk_rows(chunk_size, len(gallery)))
    return _top1(ranks, query_labels)


def top1_matches_from_similarity(
    similarity: Any, query_labels: Sequence, gallery_labels: Sequence, *, chunk_size: int | None = None
) -> Top1Matches:
    """:func:`top1_matches` from a precomputed (Q, G) score matrix (higher = more similar)."""
    similarity, query_codes, gallery_codes = _prepare_similarity(similarity, query_labels, gallery_labels)
    ranks = scan(_similarity_blocks(similarity), query_codes, gallery_codes, False,
                 _chunk_rows(chunk_size, len(gallery_codes)))
    return _top1(ranks, query_labels)
