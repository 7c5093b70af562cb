"""Local-feature matching: scores query x gallery image pairs from their keypoints (`wildreid.matching.keypoints`).

Per pair: mutual nearest neighbours + Lowe ratio test, then geometric verification (RANSAC inliers of a homography). The pair score is the verified inlier count
(or the raw match count with `geometry="none"`).

Why a homography and not a fundamental matrix: the patterns we match (stripes, spots, whisker rows,
scars) lie on near-planar patches of the body seen from similar distances, so a homography explains true
matches well under a tolerant threshold; its point-to-point transfer error is much stricter than the
fundamental matrix's point-to-line distance, and with the few tens of matches typical here a 7-8 point
epipolar model fits random matches too easily. MAGSAC++ (`cv2.USAC_MAGSAC`) is used because it
marginalises over the noise scale, so one threshold works across image sizes. Measured (leave-one-out
top-1 / mAP, 512 px, RootSIFT): lion val raw matches 42.5 / 17.2, homography 45.9 / 17.6, fundamental
(3 px) 45.9 / 18.3; pig raw 12.1 / 11.0, homography 13.0 / 10.2, fundamental 9.8 / 9.8.

Score matrices are float32 (Q, G); pairs that were not scored (outside a shortlist) hold `-inf`, so
they rank below every scored pair, including pairs with zero matches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from .keypoints import METHODS, UNIT_VECTOR_METHODS, LocalFeatures, check_descriptors, descriptor_spec, unit_vectors
from .parallel import WORKER_STATE, worker_count, worker_pool

GEOMETRIES = ("homography", "none")
# Lowe ratio per descriptor family when none is given. ALIKED's learned descriptors are less peaked than SIFT's:
# at 0.8 a rotated (25 deg), scaled (0.8) copy of a generated pattern kept 3 mutual matches of 256 keypoints and
# verified none; at 0.95 it verified 64, against <= 6 for other patterns (tests/test_aliked.py's images).
DEFAULT_RATIOS = {"sift": 0.8, "orb": 0.8, "akaze": 0.8, "aliked": 0.95}


@dataclass
class _Packed:
    """Features of many images concatenated, so workers index them without per-image objects."""

    keypoints: np.ndarray  # (total, 2) float32
    vectors: np.ndarray  # (total, D) float32, in the space where the squared distance is computed
    norms: np.ndarray  # (total,) float32, squared norms of `vectors` (bit counts for binary)
    offsets: np.ndarray  # (N + 1,) int64


class LocalMatcher:
    """Scores query x gallery image pairs by local-feature matches.

    Args:
        method: descriptor family the features were made with ("sift", "orb", "akaze", "aliked"). SIFT
            (as RootSIFT) and ALIKED (L2-normalised, as given) are compared by cosine, ORB / AKAZE by Hamming
            distance; everything after the similarity (mutual nearest neighbours, ratio test, MAGSAC) is shared.
        ratio: Lowe ratio; a match is kept when its distance is below `ratio` x the second-nearest. None: the
            family's default (`DEFAULT_RATIOS`: 0.8, ALIKED 0.95).
        geometry: "homography" (count RANSAC inliers) or "none" (count mutual ratio-test matches).
        ransac_threshold: reprojection threshold in pixels of the resized images (max side 512).
        root_sift: compare SIFT descriptors as RootSIFT (Hellinger kernel) instead of plain L2; on lion
            val raw-match top-1 goes from 38.4 % to 42.5 % at no extra cost.
        chunk_size: gallery images compared to one query per vectorised step (memory ~ chunk x K^2 x 4 B).
    """

    def __init__(
        self,
        method: str = "sift",
        ratio: float | None = None,
        geometry: str = "homography",
        ransac_threshold: float = 8.0,
        root_sift: bool = True,
        chunk_size: int = 32,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown local feature method {method!r}; choose one of {METHODS}")
        if geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {geometry!r}; choose one of {GEOMETRIES}")
        self._default_ratio = ratio is None
        ratio = DEFAULT_RATIOS.get(method, 0.8) if ratio is None else ratio
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.method = method
        self.ratio = float(ratio)
        self.geometry = geometry
        self.ransac_threshold = float(ransac_threshold)
        self.root_sift = bool(root_sift)
        self.chunk_size = int(chunk_size)

    @property
    def unit_vectors(self) -> bool:
        """Whether descriptors are compared as unit vectors (SIFT, ALIKED) rather than bit strings."""
        return self.method in UNIT_VECTOR_METHODS

    def for_method(self, method: str | None) -> "LocalMatcher":
        """This matcher with the same settings for another descriptor family (itself when it already is)."""
        if method is None or method == self.method:
            return self
        return LocalMatcher(method, None if self._default_ratio else self.ratio, self.geometry, self.ransac_threshold,
                            self.root_sift, self.chunk_size)

    # The ratio test compares squared L2 distances for unit vectors (so the ratio is squared) and Hamming
    # distances for binary descriptors.
    @property
    def _ratio_on_distances(self) -> float:
        return self.ratio**2 if self.unit_vectors else self.ratio

    def pack(self, features: Sequence[LocalFeatures]) -> _Packed:
        """Concatenate and convert descriptors to the matching space once per image set."""
        for i, item in enumerate(features):
            check_descriptors(item.descriptors, self.method, f"features[{i}]")
        width, dtype = descriptor_spec(self.method)
        if features:
            width = features[0].descriptors.shape[1]
            if any(item.descriptors.shape[1] != width for item in features):
                raise ValueError(f"{self.method} features of different widths "
                                 f"{sorted({item.descriptors.shape[1] for item in features})}: two ALIKED variants")
        offsets = np.zeros(len(features) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in features], out=offsets[1:])
        keypoints = np.concatenate([f.keypoints for f in features]) if features else np.zeros((0, 2))
        keypoints = keypoints.astype(np.float32)
        raw = np.concatenate([f.descriptors for f in features]) if features else np.zeros((0, width or 128), dtype)
        if self.unit_vectors:
            vectors = unit_vectors(raw, self.method, self.root_sift)
        else:
            vectors = np.unpackbits(raw, axis=1).astype(np.float32)
        norms = np.einsum("nd,nd->n", vectors, vectors).astype(np.float32)
        return _Packed(keypoints, np.ascontiguousarray(vectors), norms, offsets)

    def match_pair(self, query: LocalFeatures, reference: LocalFeatures) -> tuple[int, int]:
        """(mutual ratio-test matches, verified inliers) for one pair; the two are equal with
        `geometry="none"`."""
        packed_query, packed_ref = self.pack([query]), self.pack([reference])
        matches, inliers = self._score_query(packed_query, 0, packed_ref, np.array([0]))
        return int(matches[0]), int(inliers[0])

    def score(
        self,
        queries: Sequence[LocalFeatures],
        gallery: Sequence[LocalFeatures],
        candidates: np.ndarray | Sequence[Sequence[int]] | None = None,
        *,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """(Q, G) float32 scores: verified inliers (or raw matches); `-inf` where not scored.

        candidates: None scores every pair; otherwise row q lists the gallery indices to score for
            query q (e.g. the global top-B shortlist); negative entries are ignored (padding).
        """
        num_gallery = len(gallery)
        if candidates is None:
            candidate_lists = [np.arange(num_gallery)] * len(queries)
        else:
            if len(candidates) != len(queries):
                raise ValueError(f"candidates has {len(candidates)} rows but there are {len(queries)} queries")
            candidate_lists = [np.unique(np.asarray(row, dtype=np.int64)) for row in candidates]
            candidate_lists = [row[row >= 0] for row in candidate_lists]
            for q, row in enumerate(candidate_lists):
                if len(row) and row[-1] >= num_gallery:
                    raise ValueError(f"candidates row {q} holds index {row[-1]} but the gallery has "
                                     f"{num_gallery} images")
        # Only gallery images that some query needs are packed (and sent to workers), so a shortlist
        # costs memory and time in proportion to its size, not to the gallery's.
        used = np.unique(np.concatenate(candidate_lists)) if candidate_lists else np.zeros(0, np.int64)
        packed_queries, packed_gallery = self.pack(queries), self.pack([gallery[i] for i in used])
        tasks = [(q, np.searchsorted(used, row)) for q, row in enumerate(candidate_lists) if len(row)]
        scores = np.full((len(queries), num_gallery), -np.inf, dtype=np.float32)
        workers = worker_count(num_workers, len(tasks))
        bar = tqdm(total=len(tasks), desc="local matching", unit="query", disable=not progress)
        if workers <= 1:
            for q, row in tasks:
                scores[q, used[row]] = self._pair_scores(packed_queries, q, packed_gallery, row)
                bar.update()
        else:
            with worker_pool(workers, _init_match_worker, (self, packed_queries, packed_gallery)) as pool:
                # A few queries per task keeps IPC small relative to the matching work.
                batch = max(1, min(16, len(tasks) // (workers * 8)))
                blocks = [tasks[i : i + batch] for i in range(0, len(tasks), batch)]
                for block_result in pool.map(_match_block, blocks):
                    for q, row, values in block_result:
                        scores[q, used[row]] = values
                    bar.update(len(block_result))
        bar.close()
        return scores

    def score_within(self, features: Sequence[LocalFeatures], *, num_workers: int | None = None,
                     progress: bool = True) -> np.ndarray:
        """(N, N) scores among one image set (leave-one-out evaluation) at half the cost of `score`:
        each pair is matched once, with the lower index as the query, and mirrored. The diagonal is
        `-inf` (not scored)."""
        upper = [np.arange(i + 1, len(features)) for i in range(len(features))]
        scores = self.score(features, features, upper, num_workers=num_workers, progress=progress)
        lower = np.tril_indices(len(features), -1)
        scores[lower] = scores.T[lower]
        return scores

    def _pair_scores(self, queries: _Packed, q: int, gallery: _Packed, row: np.ndarray) -> np.ndarray:
        return self._score_query(queries, q, gallery, row)[1]

    def _score_query(self, queries: _Packed, q: int, gallery: _Packed,
                     row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Match query q against gallery images `row`: one matrix product per `chunk_size` images,
        then per-image reductions on slices of it (no padding, so no wasted products)."""
        q_start, q_stop = queries.offsets[q], queries.offsets[q + 1]
        q_vectors, q_xy = queries.vectors[q_start:q_stop], queries.keypoints[q_start:q_stop]
        matches = np.zeros(len(row), dtype=np.float32)
        inliers = np.zeros(len(row), dtype=np.float32)
        if len(q_vectors) == 0:
            return matches, inliers
        every_query_keypoint = np.arange(len(q_vectors))
        for chunk_start in range(0, len(row), self.chunk_size):
            chunk = row[chunk_start : chunk_start + self.chunk_size]
            starts, stops = gallery.offsets[chunk], gallery.offsets[chunk + 1]
            slots = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])
            if len(slots) == 0:
                continue
            similarity = self._similarity(q_vectors, queries.norms[q_start:q_stop], gallery, slots)
            best_per_gallery_keypoint = similarity.max(axis=0)
            bounds = np.concatenate([[0], np.cumsum(stops - starts)])
            for c in range(len(chunk)):
                lo, hi = bounds[c], bounds[c + 1]
                if hi == lo:
                    continue
                block = similarity[:, lo:hi]
                nearest = block.argmax(axis=1)
                first = block[every_query_keypoint, nearest]
                if hi - lo > 1:
                    others = block.copy()
                    others[every_query_keypoint, nearest] = -np.inf
                    second = others.max(axis=1)
                else:
                    second = np.full_like(first, -np.inf)
                # Mutual: the query keypoint is also its gallery neighbour's best query keypoint.
                mutual = first >= best_per_gallery_keypoint[lo + nearest]
                distinctive = self._distance(first) < self._ratio_on_distances * self._distance(second)
                keep = np.flatnonzero(mutual & distinctive)
                matches[chunk_start + c] = len(keep)
                inliers[chunk_start + c] = self._verify(q_xy[keep], gallery.keypoints[slots[lo + nearest[keep]]])
        return matches, inliers

    def _similarity(self, q_vectors: np.ndarray, q_norms: np.ndarray, gallery: _Packed,
                    slots: np.ndarray) -> np.ndarray:
        """(Kq, len(slots)) similarity, higher is closer: cosine for (Root)SIFT and ALIKED, minus Hamming for bits."""
        products = q_vectors @ gallery.vectors[slots].T
        if self.unit_vectors:
            return products
        return 2.0 * products - q_norms[:, None] - gallery.norms[slots][None, :]

    def _distance(self, similarity: np.ndarray) -> np.ndarray:
        """Squared L2 distance of unit vectors, or Hamming distance; -inf similarity -> inf distance."""
        return 2.0 - 2.0 * similarity if self.unit_vectors else -similarity

    def _verify(self, query_xy: np.ndarray, gallery_xy: np.ndarray) -> float:
        """Inliers of a MAGSAC++ homography; fewer than 4 matches cannot be verified and score 0."""
        if self.geometry == "none":
            return float(len(query_xy))
        if len(query_xy) < 4:
            return 0.0
        try:
            _, mask = cv2.findHomography(query_xy, gallery_xy, cv2.USAC_MAGSAC, self.ransac_threshold,
                                         maxIters=2000, confidence=0.999)
        except cv2.error:  # degenerate samples (e.g. all points collinear) leave USAC without a model
            return 0.0
        return 0.0 if mask is None else float(mask.sum())


# ------------------------------------------------------------------------------- worker processes


def _init_match_worker(matcher: LocalMatcher, queries: _Packed, gallery: _Packed) -> None:
    WORKER_STATE.update(matcher=matcher, queries=queries, gallery=gallery)


def _match_block(block: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    matcher, queries, gallery = WORKER_STATE["matcher"], WORKER_STATE["queries"], WORKER_STATE["gallery"]
    return [(q, row, matcher._pair_scores(queries, q, gallery, row)) for q, row in block]
