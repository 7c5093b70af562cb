"""The plain SIFT recipe (issue 30's reference, a bench method only, not a wildreid option): OpenCV SIFT with
nfeatures=512 on the grey crop resized so its longest side is 512 px (cv2.resize, bilinear, small crops
upscaled), mutual nearest neighbours (plain L2) that pass Lowe's 0.8 ratio in both directions, score = their
count, the top 20 re-ranked by RANSAC homography inliers (5 px, 2,000 iterations).

Shared by `small_crop_gap.py` (which attributes its gap to wildreid's one-vs-many step by step) and
`identification_accuracy.py` (its "plain recipe" column).
"""
from __future__ import annotations

import cv2
import numpy as np

from wildreid.matching import LocalFeatureExtractor, LocalFeatures
from wildreid.matching.keypoints import to_gray_uint8
from wildreid.matching.parallel import WORKER_STATE, worker_count, worker_pool

RATIO, SHORTLIST, RANSAC_PX, RANSAC_ITERS = 0.8, 20, 5.0, 2000
SETTINGS = {"ratio": RATIO, "shortlist": SHORTLIST, "ransac_px": RANSAC_PX, "iterations": RANSAC_ITERS}


def plain_sift(crop_gray: np.ndarray, side: int = 512, upscale: bool = True) -> LocalFeatures:
    """The plain recipe's own extraction: longest side to `side` (bilinear), SIFT nfeatures=512, raw descriptors."""
    height, width = crop_gray.shape
    scale = side / max(height, width)
    if scale < 1.0 or upscale:
        crop_gray = cv2.resize(crop_gray, (max(1, round(width * scale)), max(1, round(height * scale))))
    keypoints, descriptors = cv2.SIFT_create(nfeatures=512).detectAndCompute(crop_gray, None)
    if descriptors is None:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
    xy = np.array([kp.pt for kp in keypoints], np.float32).reshape(-1, 2)
    return LocalFeatures(xy, np.clip(np.rint(descriptors), 0, 255).astype(np.uint8))


class PlainSiftExtractor(LocalFeatureExtractor):
    """`plain_sift` behind the extractor interface, so `feature_cache.local_features` loads, crops, parallelises
    and caches it like wildreid's extractors (its config, the cache key, names the recipe)."""

    def __init__(self) -> None:
        super().__init__("sift", 512, 512)

    @property
    def config(self) -> dict:
        return {"method": "sift", "recipe": "plain (cv2 SIFT nfeatures=512, bilinear resize, raw descriptors)",
                "max_keypoints": 512, "max_side": 512, "upscale": True}

    def extract(self, image) -> LocalFeatures:
        return plain_sift(to_gray_uint8(image))


def _top_two(squared: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a C-contiguous matrix: the argmin, the minimum and the second smallest value (the minimum
    again where it occurs twice), as np.partition(.., 1) gives them, at a third of its cost."""
    rows = np.arange(len(squared))
    nearest = squared.argmin(axis=1)
    first = squared[rows, nearest]
    squared[rows, nearest] = np.inf
    second = squared.min(axis=1)
    squared[rows, nearest] = first
    return nearest, first, second


def plain_matches(a: LocalFeatures, b: LocalFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i in a, j in b): mutual nearest neighbours by L2 that pass the ratio test both ways."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    x, y = a.descriptors.astype(np.float32), b.descriptors.astype(np.float32)
    # (x x) + (y y) - 2 x.y, in that order of operations; doubling is exact in floating point.
    squared = x @ y.T
    squared *= 2.0
    np.subtract((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :], squared, out=squared)
    np.maximum(squared, 0.0, out=squared)
    nearest_b, first_a, second_a = _top_two(squared)  # each a keypoint's two nearest in b
    nearest_a, first_b, second_b = _top_two(np.ascontiguousarray(squared.T))  # each b keypoint's two nearest in a
    rows = np.arange(len(x))
    mutual = nearest_a[nearest_b] == rows
    ratio_a = first_a < RATIO**2 * second_a  # squared distances: squared ratio
    ratio_b = (first_b < RATIO**2 * second_b)[nearest_b]
    keep = np.flatnonzero(mutual & ratio_a & ratio_b)
    return keep, nearest_b[keep]


def ransac_inliers(a: LocalFeatures, b: LocalFeatures, i: np.ndarray, j: np.ndarray) -> int:
    if len(i) < 4:
        return 0
    try:
        _, mask = cv2.findHomography(a.keypoints[i], b.keypoints[j], cv2.RANSAC, RANSAC_PX, maxIters=RANSAC_ITERS)
    except cv2.error:
        return 0
    return 0 if mask is None else int(mask.sum())


def plain_counts(features: list[LocalFeatures]) -> np.ndarray:
    """(N, N) plain-recipe match counts, leave-one-out (the measure is symmetric: each pair once)."""
    n = len(features)
    counts = np.full((n, n), -np.inf, dtype=np.float32)
    for q in range(n):
        for g in range(q + 1, n):
            counts[q, g] = counts[g, q] = len(plain_matches(features[q], features[g])[0])
    return counts


def reranked_row(query: LocalFeatures, gallery: list[LocalFeatures], first: np.ndarray,
                 shortlist: int = SHORTLIST) -> np.ndarray:
    """One query's top `shortlist` by `first` re-ranked by RANSAC inliers of the plain matches (then the count),
    above every other image (which keeps its `first` order); -inf in `first` (its own image) stays -inf."""
    scores = first.astype(np.float64) - 1e6
    top = np.argsort(-first, kind="stable")[:shortlist]
    for g in top[np.isfinite(first[top])]:
        i, j = plain_matches(query, gallery[g])
        scores[g] = 1e3 * ransac_inliers(query, gallery[g], i, j) + len(i)
    return scores


def reranked(features: list[LocalFeatures], first: np.ndarray, shortlist: int = SHORTLIST) -> np.ndarray:
    """`reranked_row` of every image against the others (`first`: leave-one-out, -inf on the diagonal)."""
    return np.stack([reranked_row(features[q], features, first[q], shortlist) for q in range(len(features))])


def recipe_row(query: LocalFeatures, gallery: list[LocalFeatures], own: int) -> np.ndarray:
    """The plain recipe's scores of one query against a gallery; `own` (>= 0): the query's own image, -inf."""
    counts = np.full(len(gallery), -np.inf, dtype=np.float32)
    for g, candidate in enumerate(gallery):
        if g != own:
            counts[g] = len(plain_matches(query, candidate)[0])
    return reranked_row(query, gallery, counts)


def recipe_scores(queries: list[LocalFeatures], gallery: list[LocalFeatures], own: np.ndarray,
                  num_workers: int) -> np.ndarray:
    """(Q, G) plain-recipe scores, one query per task over `num_workers` processes; `own[q]`: query q's own
    column in the gallery (leave-one-out), -1 where it has none."""
    workers = worker_count(num_workers, len(queries))
    if workers <= 1:
        return np.stack([recipe_row(query, gallery, int(o)) for query, o in zip(queries, own)])
    with worker_pool(workers, _init_worker, (queries, gallery, own)) as pool:
        return np.stack(list(pool.map(_row_task, range(len(queries)), chunksize=4)))


def _init_worker(queries: list[LocalFeatures], gallery: list[LocalFeatures], own: np.ndarray) -> None:
    WORKER_STATE.update(plain_queries=queries, plain_gallery=gallery, plain_own=own)


def _row_task(q: int) -> np.ndarray:
    return recipe_row(WORKER_STATE["plain_queries"][q], WORKER_STATE["plain_gallery"], int(WORKER_STATE["plain_own"][q]))
