"""Local features (OpenCV SIFT by default; ORB or AKAZE optionally): what each image contributes to
keypoint matching.

Pipeline per image: grey crop -> resize so the longest side is `max_side` -> detect, keep the
`max_keypoints` strongest -> descriptors. Small crops are upscaled by default: on lion val (crops of
~130 px) that raises plain-SIFT leave-one-out top-1 from 29.5 % to 38.4 % (148 -> 376 keypoints per image);
`upscale=False` only shrinks. Pairs of images are scored by `wildreid.matching.local_matcher`; features
of a gallery are stored by `wildreid.matching.descriptor_cache`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from ..embedding.images import LoadFailure, check_annotation_lengths, iter_crops
from .parallel import parallel_map

METHODS = ("sift", "orb", "akaze")
# Keypoints kept per image unless asked otherwise (`bench/keypoint_budget.py` measures other budgets per species).
DEFAULT_MAX_KEYPOINTS = 512
# Descriptor width in bytes as stored: SIFT values are integers 0..255 (OpenCV saturates them to uchar
# before returning float32), ORB and AKAZE are packed bit strings.
DESCRIPTOR_BYTES = {"sift": 128, "orb": 32, "akaze": 61}


@dataclass
class LocalFeatures:
    """Keypoints and descriptors of one image.

    keypoints: (N, 2) float32 x, y in pixels of the resized image.
    descriptors: (N, B) uint8, B = DESCRIPTOR_BYTES[method].
    """

    keypoints: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)


def to_gray_uint8(image: Image.Image | np.ndarray) -> np.ndarray:
    """Grey uint8 array from a PIL image or an (H, W), (H, W, 3) RGB or (H, W, 4) RGBA array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    array = image
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"image arrays must be uint8 or float in [0, 1], got dtype {array.dtype}")
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.ndim == 2:
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2GRAY)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGBA2GRAY)
    raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")


class LocalFeatureExtractor:
    """Computes `LocalFeatures` once per image; pictures come as PIL images or arrays, or as paths."""

    def __init__(self, method: str = "sift", max_keypoints: int = DEFAULT_MAX_KEYPOINTS, max_side: int = 512,
                 upscale: bool = True):
        if method not in METHODS:
            raise ValueError(f"unknown local feature method {method!r}; choose one of {METHODS}")
        if method == "akaze" and not hasattr(cv2, "AKAZE_create"):
            raise ValueError(f"AKAZE is not part of this OpenCV build ({cv2.__version__}; OpenCV 5 moved it to "
                             "opencv-contrib-python); use method='sift' or 'orb'")
        if max_keypoints < 1 or max_side < 16:
            raise ValueError(f"need max_keypoints >= 1 and max_side >= 16, got {max_keypoints}, {max_side}")
        self.method = method
        self.max_keypoints = int(max_keypoints)
        self.max_side = int(max_side)
        self.upscale = bool(upscale)
        self._detector = None  # OpenCV objects cannot be pickled; built lazily in each process

    @property
    def config(self) -> dict[str, Any]:
        """What determines the features; stored with every cache so stale caches are refused."""
        return {"method": self.method, "max_keypoints": self.max_keypoints, "max_side": self.max_side,
                "upscale": self.upscale}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_detector": None}

    def _get_detector(self):
        if self._detector is None:
            if self.method == "sift":
                self._detector = cv2.SIFT_create(nfeatures=self.max_keypoints)
            elif self.method == "orb":
                self._detector = cv2.ORB_create(nfeatures=self.max_keypoints)
            else:
                self._detector = cv2.AKAZE_create()
        return self._detector

    def extract(self, image: Image.Image | np.ndarray) -> LocalFeatures:
        """Features of one already-loaded (and cropped) image."""
        gray = to_gray_uint8(image)
        height, width = gray.shape
        scale = self.max_side / max(height, width)
        if scale < 1.0 or (self.upscale and scale > 1.0):
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC)
        detector = self._get_detector()
        keypoints = detector.detect(gray, None)
        # Detectors may return a few more than asked (ties, extra orientations); keep the strongest.
        keypoints = sorted(keypoints, key=lambda kp: kp.response, reverse=True)[: self.max_keypoints]
        keypoints, descriptors = detector.compute(gray, keypoints)
        if descriptors is None or len(keypoints) == 0:
            return _empty_features(self.method)
        if self.method == "sift":
            descriptors = np.clip(np.rint(descriptors), 0, 255)
        xy = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
        return LocalFeatures(xy, np.ascontiguousarray(descriptors, dtype=np.uint8))

    def extract_many(
        self,
        images: Sequence[Image.Image | np.ndarray],
        *,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> list[LocalFeatures]:
        """Features of many loaded images, computed in parallel processes."""
        return parallel_map(
            _extract_loaded_task,
            [(self, image) for image in images],
            num_workers=num_workers,
            progress=progress,
            description=f"{self.method} features",
        )

    def extract_paths(
        self,
        sources: Sequence[Any],
        bboxes: Sequence[Sequence[float] | None] | None = None,
        thetas: Sequence[float] | None = None,
        *,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> tuple[list[LocalFeatures | None], list[LoadFailure]]:
        """Load each source with the shared preprocessing, crop it to its box and extract features.

        Returns one entry per source (None where it failed) and the failures, each naming its file and
        the reason; a bad file never aborts the batch.
        """
        check_annotation_lengths(sources, bboxes, thetas)
        tasks = [
            (self, source, None if bboxes is None else bboxes[i], 0.0 if thetas is None else float(thetas[i]))
            for i, source in enumerate(sources)
        ]
        outcomes = parallel_map(
            _extract_path_task, tasks, num_workers=num_workers, progress=progress,
            description=f"{self.method} features",
        )
        features = [outcome if isinstance(outcome, LocalFeatures) else None for outcome in outcomes]
        failures = [outcome for outcome in outcomes if isinstance(outcome, LoadFailure)]
        return features, failures


def _empty_features(method: str) -> LocalFeatures:
    return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES[method]), np.uint8))


def _extract_loaded_task(task: tuple[LocalFeatureExtractor, Any]) -> LocalFeatures:
    extractor, image = task
    return extractor.extract(image)


def _extract_path_task(task: tuple[LocalFeatureExtractor, Any, Any, float]) -> LocalFeatures | LoadFailure:
    extractor, source, bbox, theta = task
    failures: list[LoadFailure] = []
    for _, crop in iter_crops([source], [bbox], [theta], failures=failures):
        return extractor.extract(crop)
    return failures[0]


# --------------------------------------------------------------------------------------------- cache
