"""Local features: what each image contributes to keypoint matching. One extractor interface,
`LocalFeatureExtractor(method=...)`, over two families:

- "sift" (default; OpenCV), or "orb" / "akaze": hand-made, uint8 descriptors (SIFT's 128 integers; bit strings);
- "aliked": ALIKED (Zhao et al., IEEE TIM 2023) through kornia, a learned detector and 128-d L2-normalised
  descriptor; variants n16 (default), n16rot (trained for in-plane rotation) and t16 (tiny, faster). The
  authors' weights ship inside the package (`weights/aliked/`, BSD-3-Clause, their LICENSE beside them) and
  are SHA-256 checked when loaded; `weights=` points at other weights (their checksum is then recorded).
  Descriptors are stored as float16 (256 bytes a keypoint, SIFT's 128): the values are unit-vector
  components, and float16 keeps ~3 significant digits of them; on the first 60 lion:train and 80 nyala:train
  crops every query kept its best image and float32's top-1 / mAP (`bench/aliked_descriptor_precision.py`).

Pipeline per image, the same for every method: crop -> resize so the longest side is `max_side` -> detect,
keep the `max_keypoints` strongest -> descriptors (SIFT on the grey image, ALIKED on RGB). Small crops are
upscaled by default: on lion:train (594 crops, median 130 px; `bench/small_crop_gap.py --spec lion:train`) that
raises one-vs-many top-1 from 42.3 % to 50.2 % and the plain SIFT recipe's from 30.3 to 39.1 % (158 -> 394
keypoints per image); `upscale=False` only shrinks. `config` (method, budget, side, and for
ALIKED the variant, weights checksum and detection threshold) is recorded with every cache, descriptor index
and gallery, so features made another way are refused. Pairs of images are scored by
`wildreid.matching.local_matcher`, a query against a gallery by `wildreid.matching.one_vs_many`; features of a
gallery are stored by `wildreid.matching.descriptor_cache`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from ..embedding.images import LoadFailure, check_annotation_lengths, iter_crops
from . import aliked
from .aliked import ALIKED_DIMS, ALIKED_SHA256, ALIKED_VARIANTS, DEFAULT_ALIKED_VARIANT  # noqa: F401  (re-exported)
from .parallel import WORKER_STATE, parallel_map

METHODS = ("sift", "orb", "akaze", "aliked")
# The choices of `--local-features` (the families one-vs-many retrieval indexes).
LOCAL_FEATURE_CHOICES = ("sift", "aliked")
# Keypoints kept per image unless asked otherwise (`bench/keypoint_budget.py` measures other budgets per species).
DEFAULT_MAX_KEYPOINTS = 512
DEFAULT_MAX_SIDE = 512
# Descriptor width in bytes as stored for the uint8 families: SIFT values are integers 0..255 (OpenCV
# saturates them to uchar before returning float32), ORB and AKAZE are packed bit strings.
DESCRIPTOR_BYTES = {"sift": 128, "orb": 32, "akaze": 61}
# (width, dtype) of each family's stored descriptors: ALIKED's are float16 components of unit vectors, 128-d
# (n16, n16rot) or 64-d (t16): `descriptor_spec` gives a variant's.
DESCRIPTORS: dict[str, tuple[int, Any]] = {**{m: (w, np.uint8) for m, w in DESCRIPTOR_BYTES.items()},
                                           "aliked": (128, np.float16)}
# Families compared as unit vectors (RootSIFT, ALIKED as given) by cosine; the others are bit strings (Hamming).
UNIT_VECTOR_METHODS = ("sift", "aliked")



@dataclass
class LocalFeatures:
    """Keypoints and descriptors of one image.

    keypoints: (N, 2) float32 x, y in pixels of the resized image.
    descriptors: (N, W) of the method's stored dtype (`DESCRIPTORS[method]`): uint8 for SIFT / ORB / AKAZE,
        float16 for ALIKED.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)


def _as_uint8_array(image: Image.Image | np.ndarray, mode: str) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert(mode))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    array = image
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"image arrays must be uint8 or float in [0, 1], got dtype {array.dtype}")
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if not (array.ndim == 2 or array.ndim == 3 and array.shape[2] in (3, 4)):
        raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    return np.ascontiguousarray(array)


def to_gray_uint8(image: Image.Image | np.ndarray) -> np.ndarray:
    """Grey uint8 array from a PIL image or an (H, W), (H, W, 3) RGB or (H, W, 4) RGBA array."""
    array = _as_uint8_array(image, "L")
    if array.ndim == 2:
        return array
    return cv2.cvtColor(array, cv2.COLOR_RGB2GRAY if array.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)


def to_rgb_uint8(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 array from a PIL image or an (H, W), (H, W, 3) RGB or (H, W, 4) RGBA array."""
    array = _as_uint8_array(image, "RGB")
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    return array if array.shape[2] == 3 else np.ascontiguousarray(array[:, :, :3])


def descriptor_spec(method: str, variant: str | None = None) -> tuple[int | None, Any]:
    """(width, dtype) of `method`'s stored descriptors; ALIKED's width is its variant's (None: 64 or 128)."""
    if method == "aliked":
        return (ALIKED_DIMS[variant] if variant else None), np.float16
    return DESCRIPTORS[method]


def config_descriptor_spec(config: dict[str, Any]) -> tuple[int | None, Any]:
    """`descriptor_spec` of an extractor config (`LocalFeatureExtractor.config`)."""
    return descriptor_spec(config.get("method", "sift"), config.get("variant"))


def descriptor_family(descriptors: np.ndarray) -> str:
    """The family stored descriptors look like ("sift", "aliked", ...), for messages that name both sides."""
    if descriptors.ndim == 2 and descriptors.dtype == np.float16 and descriptors.shape[1] in ALIKED_DIMS.values():
        return "aliked"
    for method, (width, dtype) in DESCRIPTORS.items():
        if descriptors.ndim == 2 and descriptors.dtype == dtype and descriptors.shape[1] == width:
            return method
    return f"unknown ({descriptors.dtype} {descriptors.shape[1:]})"


def check_descriptors(descriptors: np.ndarray, method: str, what: str, variant: str | None = None) -> None:
    """Raise, naming both families, unless `descriptors` are stored as `method`'s (`variant`'s) are."""
    width, dtype = descriptor_spec(method, variant)
    widths = (width,) if width else tuple(sorted(set(ALIKED_DIMS.values())))
    if descriptors.ndim != 2 or descriptors.dtype != dtype or descriptors.shape[1] not in widths:
        shape = " or ".join(f"(N, {w})" for w in widths)
        raise ValueError(f"{what} have {descriptor_family(descriptors)} descriptors ({descriptors.dtype} "
                         f"{descriptors.shape}), expected {np.dtype(dtype).name} {shape} for {method} features")


def unit_vectors(descriptors: np.ndarray, method: str, root_sift: bool = True) -> np.ndarray:
    """(N, D) float32 unit vectors in which the squared L2 distance is compared: RootSIFT (or L2-normalised
    SIFT with `root_sift=False`) for SIFT, the (re-normalised, float16 rounding) ALIKED descriptors as given."""
    if method not in UNIT_VECTOR_METHODS:
        raise ValueError(f"{method} descriptors are bit strings; unit vectors exist for {UNIT_VECTOR_METHODS}")
    vectors = descriptors.astype(np.float32)
    if method == "sift" and root_sift:
        vectors = np.sqrt(vectors / np.maximum(vectors.sum(axis=1, keepdims=True), 1e-6))
    else:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
    return np.ascontiguousarray(vectors)


def empty_features(method: str, variant: str | None = None) -> LocalFeatures:
    """No keypoints, with the descriptor shape and dtype of `method` (ALIKED: of `variant`, default n16)."""
    width, dtype = descriptor_spec(method, variant or (DEFAULT_ALIKED_VARIANT if method == "aliked" else None))
    return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, width), dtype))


class LocalFeatureExtractor:
    """Computes `LocalFeatures` once per image; pictures come as PIL images or arrays, or as paths.

    The one extractor interface of every local path: `method` picks the family ("sift", "orb", "akaze",
    "aliked"), `config` is what caches, descriptor indexes and galleries record (and `LocalFeatureExtractor(
    **config)` rebuilds the same extractor for a gallery's queries), `extract(image)` gives keypoints and
    descriptors. ALIKED only: `variant` (n16, n16rot, t16), `weights` (a .pth path instead of the shipped
    file), `weights_sha256` (the checksum the weights must have: a recorded config's; default the shipped
    file's, or the given file's own), `detection_threshold` (see aliked.DEFAULT_ALIKED_THRESHOLD) and `scales`
    (ALIKED is a single-scale detector: (1.0, 0.5, 0.25) also runs it on the resized crop at half and a quarter
    size, the keypoint budget split among the levels in proportion to their scale; see aliked.DEFAULT_ALIKED_SCALES).
    """

    def __init__(self, method: str = "sift", max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
                 max_side: int = DEFAULT_MAX_SIDE, upscale: bool = True, *, variant: str | None = None,
                 weights: str | os.PathLike | None = None, weights_sha256: str | None = None,
                 detection_threshold: float | None = None, scales: Sequence[float] | None = None):
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
        self._detector = None  # OpenCV objects and torch modules are not pickled; built lazily in each process
        self.descriptor_dtype = np.float16  # ALIKED's storage type (a bench may keep float32 to measure the rounding)
        self._aliked: dict[str, Any] | None = None
        if method == "aliked":
            self._aliked = aliked.settings(variant, weights, weights_sha256, detection_threshold, scales)
        elif (variant, weights, weights_sha256, detection_threshold, scales) != (None,) * 5:
            raise ValueError(f"variant, weights, weights_sha256, detection_threshold and scales are ALIKED settings; "
                             f"method {method!r} takes none")

    @property
    def name(self) -> str:
        """"sift", "orb", "akaze" or "aliked-<variant>"."""
        return f"aliked-{self._aliked['variant']}" if self._aliked else self.method

    @property
    def config(self) -> dict[str, Any]:
        """What determines the features; stored with every cache so stale caches are refused."""
        config = {"method": self.method, "max_keypoints": self.max_keypoints, "max_side": self.max_side,
                  "upscale": self.upscale}
        if self._aliked:
            config.update(self._aliked)
        return config

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_detector": None}

    def _get_detector(self):
        if self._detector is None:
            if self.method == "sift":
                self._detector = cv2.SIFT_create(nfeatures=self.max_keypoints)
            elif self.method == "orb":
                self._detector = cv2.ORB_create(nfeatures=self.max_keypoints)
            elif self.method == "akaze":
                self._detector = cv2.AKAZE_create()
            else:
                self._detector = aliked.module(self._aliked, self.max_keypoints,
                                               single_thread="thread_limits" in WORKER_STATE)  # a pool worker
        return self._detector

    def empty(self) -> LocalFeatures:
        """No keypoints, shaped as this extractor's features (an image that could not be read)."""
        return empty_features(self.method, self._aliked["variant"] if self._aliked else None)

    def load(self) -> "LocalFeatureExtractor":
        """Build the detector now (for ALIKED: read and check the weights), so a bad file fails before any image."""
        self._get_detector()
        return self

    def _resized(self, array: np.ndarray) -> np.ndarray:
        height, width = array.shape[:2]
        scale = self.max_side / max(height, width)
        if scale < 1.0 or (self.upscale and scale > 1.0):
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            array = cv2.resize(array, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC)
        return array

    def extract(self, image: Image.Image | np.ndarray) -> LocalFeatures:
        """Features of one already-loaded (and cropped) image."""
        if self.method == "aliked":
            return self._extract_aliked(self._resized(to_rgb_uint8(image)))
        gray = self._resized(to_gray_uint8(image))
        detector = self._get_detector()
        keypoints = detector.detect(gray, None)
        # Detectors may return a few more than asked (ties, extra orientations); keep the strongest.
        keypoints = sorted(keypoints, key=lambda kp: kp.response, reverse=True)[: self.max_keypoints]
        keypoints, descriptors = detector.compute(gray, keypoints)
        if descriptors is None or len(keypoints) == 0:
            return empty_features(self.method)
        if self.method == "sift":
            descriptors = np.clip(np.rint(descriptors), 0, 255)
        xy = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
        return LocalFeatures(xy, np.ascontiguousarray(descriptors, dtype=np.uint8))

    def _extract_aliked(self, rgb: np.ndarray) -> LocalFeatures:
        xy, descriptors = aliked.detect(self._get_detector(), rgb, self._aliked, self.max_keypoints,
                                        self.descriptor_dtype)
        return LocalFeatures(xy, descriptors)

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
            description=f"{self.name} features",
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
            description=f"{self.name} features",
        )
        features = [outcome if isinstance(outcome, LocalFeatures) else None for outcome in outcomes]
        failures = [outcome for outcome in outcomes if isinstance(outcome, LoadFailure)]
        return features, failures


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
