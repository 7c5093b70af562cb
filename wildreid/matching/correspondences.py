"""The verified keypoint correspondences behind one local-match score, for explaining a match.

`LocalMatcher` only counts inliers (that is all ranking needs); a reviewer needs to see which points
matched. `verified_correspondences` runs the same steps on one pair (RootSIFT, ALIKED or Hamming
similarity, mutual nearest neighbours, Lowe ratio test, MAGSAC++ homography) and returns the point pairs, so
the inlier count it reports equals `LocalMatcher.match_pair(...)[1]` for the same features.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .keypoints import LocalFeatures
from .local_matcher import LocalMatcher


@dataclass
class Correspondences:
    """Matched keypoints of a query and a reference image, in the extractor's resized pixel frame.

    query_xy / reference_xy: (M, 2) float32, row i of one matches row i of the other (the mutual
        ratio-test matches); inliers: (M,) bool, the ones the homography verified.
    """

    query_xy: np.ndarray
    reference_xy: np.ndarray
    inliers: np.ndarray

    @property
    def num_matches(self) -> int:
        return len(self.inliers)

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())

    def verified(self) -> tuple[np.ndarray, np.ndarray]:
        """(query, reference) points of the verified matches only."""
        return self.query_xy[self.inliers], self.reference_xy[self.inliers]


def verified_correspondences(matcher: LocalMatcher, query: LocalFeatures, reference: LocalFeatures) -> Correspondences:
    """Mutual ratio-test matches between two feature sets and which of them RANSAC verified."""
    empty = Correspondences(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, bool))
    if len(query) == 0 or len(reference) == 0:
        return empty
    packed_query, packed_reference = matcher.pack([query]), matcher.pack([reference])
    similarity = packed_query.vectors @ packed_reference.vectors.T
    if not matcher.unit_vectors:  # bit vectors: minus the Hamming distance, as LocalMatcher scores them
        similarity = 2.0 * similarity - packed_query.norms[:, None] - packed_reference.norms[None, :]
    rows = np.arange(len(similarity))
    nearest = similarity.argmax(axis=1)
    first = similarity[rows, nearest]
    second = np.full_like(first, -np.inf)
    if similarity.shape[1] > 1:
        others = similarity.copy()
        others[rows, nearest] = -np.inf
        second = others.max(axis=1)
    mutual = first >= similarity.max(axis=0)[nearest]
    distance = (lambda s: 2.0 - 2.0 * s) if matcher.unit_vectors else (lambda s: -s)
    ratio = matcher.ratio**2 if matcher.unit_vectors else matcher.ratio
    keep = np.flatnonzero(mutual & (distance(first) < ratio * distance(second)))
    query_xy = query.keypoints[keep].astype(np.float32)
    reference_xy = reference.keypoints[nearest[keep]].astype(np.float32)
    return Correspondences(query_xy, reference_xy, _homography_inliers(matcher, query_xy, reference_xy))


def _homography_inliers(matcher: LocalMatcher, query_xy: np.ndarray, reference_xy: np.ndarray) -> np.ndarray:
    """The same verification as `LocalMatcher`: MAGSAC++ homography; < 4 matches verify nothing."""
    if matcher.geometry == "none":
        return np.ones(len(query_xy), bool)
    if len(query_xy) < 4:
        return np.zeros(len(query_xy), bool)
    try:
        _, mask = cv2.findHomography(query_xy, reference_xy, cv2.USAC_MAGSAC, matcher.ransac_threshold,
                                     maxIters=2000, confidence=0.999)
    except cv2.error:  # degenerate samples leave USAC without a model
        return np.zeros(len(query_xy), bool)
    return np.zeros(len(query_xy), bool) if mask is None else mask.ravel().astype(bool)


def feature_frame_scale(image_size: tuple[int, int], max_side: int, upscale: bool) -> tuple[float, float]:
    """(sx, sy) mapping keypoint coordinates of `LocalFeatureExtractor` back to the crop's pixels."""
    width, height = image_size
    scale = max_side / max(width, height)
    if scale < 1.0 or (upscale and scale > 1.0):
        return width / max(1, round(width * scale)), height / max(1, round(height * scale))
    return 1.0, 1.0
