"""Pictures for the review app: a query and a gallery image side by side, and the same pair with the
verified local correspondences drawn as lines and their density shaded ("where they concentrate")."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from wildreid.matching.correspondences import Correspondences, feature_frame_scale

GAP = 12  # pixels between the two images
LINE_COLOURS = ((0, 200, 255), (255, 170, 0), (120, 255, 80), (255, 80, 200), (80, 140, 255))


def _fit_height(image: Image.Image, height: int) -> tuple[np.ndarray, float]:
    """RGB array scaled to `height` pixels, and the factor applied."""
    factor = height / image.height
    width = max(1, round(image.width * factor))
    return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR)), factor


def side_by_side(left: Image.Image, right: Image.Image, height: int = 256) -> np.ndarray:
    """(height, W, 3) uint8: the two images at one height with a white gap between them."""
    a, _ = _fit_height(left, height)
    b, _ = _fit_height(right, height)
    return np.concatenate([a, np.full((height, GAP, 3), 255, np.uint8), b], axis=1)


def _density_overlay(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Shade the image red where points are dense (Gaussian kernel density, peak-normalised)."""
    if len(points) == 0:
        return image
    height, width = image.shape[:2]
    heat = np.zeros((height, width), np.float32)
    for x, y in points:
        heat[min(height - 1, max(0, int(y))), min(width - 1, max(0, int(x)))] += 1.0
    heat = cv2.GaussianBlur(heat, (0, 0), sigmaX=max(4.0, 0.06 * max(height, width)))
    heat /= max(float(heat.max()), 1e-6)
    tint = np.zeros_like(image, dtype=np.float32)
    tint[..., 0] = 255.0
    alpha = 0.55 * heat[..., None]
    return (image.astype(np.float32) * (1 - alpha) + tint * alpha).astype(np.uint8)


def draw_correspondences(query: Image.Image, reference: Image.Image, correspondences: Correspondences, *,
                         max_side: int, upscale: bool, height: int = 256, max_lines: int = 60) -> np.ndarray:
    """The pair side by side, verified correspondences as lines, their density shaded red.

    max_side / upscale: the `LocalFeatureExtractor` settings the keypoints were computed with, to map
    them from its resized frame back onto these crops.
    """
    left, left_factor = _fit_height(query, height)
    right, right_factor = _fit_height(reference, height)
    query_xy, reference_xy = correspondences.verified()
    query_points = _to_picture(query_xy, query.size, max_side, upscale, left_factor)
    reference_points = _to_picture(reference_xy, reference.size, max_side, upscale, right_factor)
    canvas = np.concatenate([_density_overlay(left, query_points), np.full((height, GAP, 3), 255, np.uint8),
                             _density_overlay(right, reference_points)], axis=1)
    offset = left.shape[1] + GAP
    step = max(1, len(query_points) // max_lines)  # evenly thinned so a dense match stays readable
    for i, (p, q) in enumerate(zip(query_points[::step], reference_points[::step])):
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        start, end = (int(round(p[0])), int(round(p[1]))), (int(round(q[0])) + offset, int(round(q[1])))
        cv2.line(canvas, start, end, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, start, 3, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, end, 3, colour, -1, cv2.LINE_AA)
    return canvas


def _to_picture(points: np.ndarray, crop_size: Sequence[int], max_side: int, upscale: bool, factor: float) -> np.ndarray:
    sx, sy = feature_frame_scale(tuple(crop_size), max_side, upscale)
    return points.astype(np.float32) * np.array([sx * factor, sy * factor], np.float32)
