"""ALIKED (Zhao et al., IEEE TIM 2023) for `keypoints.LocalFeatureExtractor(method="aliked")`: the shipped
weights and their checksums, the settings an extractor records, loading the kornia module (weights checked
before they are read into it), and detection at one or several scales. The extractor interface, resizing and
storage are `wildreid.matching.keypoints`'; this module knows nothing of them."""
from __future__ import annotations

import functools
import hashlib
import io
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..records import file_sha256

ALIKED_DIMS = {"n16": 128, "n16rot": 128, "t16": 64}
ALIKED_VARIANTS = ("n16", "n16rot", "t16")
DEFAULT_ALIKED_VARIANT = "n16"
ALIKED_WEIGHTS_DIR = Path(__file__).with_name("weights") / "aliked"
# SHA-256 of the shipped weight files (the ALIKED authors' models/ at Shiaoming/ALIKED@683d7c6); kept in the
# code, not only beside the files, so a replaced file cannot bring its own checksum.
ALIKED_SHA256 = {
    "n16": "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2",
    "n16rot": "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332",
    "t16": "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085",
}
# 0: top-k mode, the `max_keypoints` strongest score maxima (SIFT's nfeatures semantics); > 0: only maxima above
# it, at most `max_keypoints` (LightGlue's default 0.2, which leaves small crops few keypoints).
DEFAULT_ALIKED_THRESHOLD = 0.0
# ALIKED detects at one scale; lion crops of one individual are often crops of one photo at other zooms. A pyramid
# helps there and costs elsewhere (`bench/aliked_scales.py`, one-vs-many leave-one-out on training splits, 512 px,
# 512 keypoints in all): lion:train's first 60 crops 11.7 % top-1 at (1.0,), 18.3 % at (1.0, 0.5, 0.25), SIFT 51.7 %;
# nyala:train's first 80 36.7 % and 32.9 %, SIFT 40.5 %; and the pyramid takes 0.52 s an image against 0.40 s.
DEFAULT_ALIKED_SCALES = (1.0,)
_MODELS: dict[tuple, Any] = {}  # loaded (checked) modules of this process, by weights and settings


def load(variant: str, path: str | os.PathLike, expected_sha256: str, *, max_keypoints: int,
         detection_threshold: float):
    """The kornia ALIKED module in evaluation mode, its weights read from `path` after their SHA-256 matched
    `expected_sha256` (one read: the bytes checked are the bytes loaded)."""
    try:
        import torch
        from kornia.feature import ALIKED
    except ImportError as error:
        raise ValueError(f"ALIKED local features need kornia ({error}): pip install 'kornia>=0.9.2'") from None
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"ALIKED-{variant} weights {path}: cannot read them ({error})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ValueError(f"ALIKED-{variant} weights {path}: SHA-256 {actual} differs from the expected "
                         f"{expected_sha256}: the file is damaged or other weights than the ones these features were "
                         "made with; give other weights explicitly (weights=<path>, `--aliked_weights`), and rebuild "
                         "features made with the old ones")
    model = ALIKED(model_name=f"aliked-{variant}", max_num_keypoints=max_keypoints,
                   detection_threshold=detection_threshold)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of other shapes: another variant's file
        raise ValueError(f"{path}: not ALIKED-{variant} weights ({str(error).splitlines()[0]})") from None
    if unexpected or set(missing) - {"dkd.hw_grid"}:  # hw_grid: a buffer the module computes itself
        raise ValueError(f"{path}: not ALIKED-{variant} weights (missing {sorted(missing)[:5]}, unexpected "
                         f"{sorted(unexpected)[:5]})")
    # Channels-last: the same keypoints and descriptors (to ~4e-6), ~1.4x faster on one CPU thread at 512 px: the
    # dense maps' L2 normalisation over channels, ~40 % of the time in NCHW, becomes a contiguous reduction.
    return _with_fast_cpu_kernels(model.eval().to(memory_format=torch.channels_last))


def _with_fast_cpu_kernels(model):
    """`model` with its SELU gates (one module shared by every block) replaced by `_fast_selu_module()` and its
    deformable convolutions run by torchvision's C++ kernel (`_torchvision_deform_conv_class()`)."""
    import torch
    from kornia.feature.aliked.aliked import DeformableConv2d

    fast, torchvision_conv = _fast_selu_module(), _torchvision_deform_conv_class()
    for parent in model.modules():
        for name, child in list(parent._modules.items()):  # not named_children(): it skips repeats of one module
            if isinstance(child, torch.nn.SELU):
                parent._modules[name] = fast
            elif isinstance(child, DeformableConv2d):
                parent._modules[name] = torchvision_conv(child)
    return model


def _fast_selu_module():
    """SELU from `exp`: PyTorch's CPU SELU kernel is not vectorised as `exp` is, and took ~40 % of n16's time at
    512 px on one thread. Measured (/proc/cpuinfo: AMD EPYC, AVX-512): the same keypoints, descriptors within
    2e-6, 0.69 -> 0.53 s an image. In place, as kornia's `nn.SELU(inplace=True)` gate is."""
    import torch

    alpha, scale = 1.6732632423543772, 1.0507009873554805  # SELU's constants (Klambauer et al. 2017)

    class FastSELU(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            negative = torch.clamp(x, max=0.0).exp_().sub_(1.0).mul_(alpha)
            return x.clamp_(min=0.0).add_(negative).mul_(scale)

    return FastSELU()


def onnx_exportable(model):
    """A copy of a loaded module with kornia's pure-PyTorch deformable convolutions back in place of torchvision's
    (whose C++ operator has no ONNX export), in NCHW; the same weights and outputs."""
    import copy

    import torch
    from kornia.feature.aliked.aliked import DeformableConv2d

    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if isinstance(child, _torchvision_deform_conv_class()):
                kornia_conv = DeformableConv2d(1, 1, stride=child.stride, padding=child.padding,
                                               dilation=child.dilation, mask=child.mask)
                kornia_conv.offset_conv, kornia_conv.regular_conv = child.offset_conv, child.regular_conv
                parent._modules[name] = kornia_conv
    return model


@functools.cache
def _torchvision_deform_conv_class():
    """kornia's `DeformableConv2d` (offsets from a 3x3 conv, clamped to a quarter of the map's side, optional DCNv2
    mask) with the sampling done by `torchvision.ops.deform_conv2d`, whose C++ kernel computes what kornia's
    pure-PyTorch one does (same keypoints, descriptors within 1e-5) ~5 % faster on n16 at 512 px."""
    import torch
    from torchvision.ops import deform_conv2d

    class TorchvisionDeformConv(torch.nn.Module):
        def __init__(self, kornia_conv):
            super().__init__()
            self.offset_conv, self.regular_conv = kornia_conv.offset_conv, kornia_conv.regular_conv
            self.stride, self.padding, self.dilation = kornia_conv.stride, kornia_conv.padding, kornia_conv.dilation
            self.mask = kornia_conv.mask

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            max_offset = max(x.shape[2:]) / 4.0
            out = self.offset_conv(x)
            mask = None
            if self.mask:
                first, second, mask = torch.chunk(out, 3, dim=1)
                out, mask = torch.cat((first, second), dim=1), torch.sigmoid(mask)
            return deform_conv2d(x, out.clamp(-max_offset, max_offset), self.regular_conv.weight,
                                 self.regular_conv.bias, stride=self.stride, padding=self.padding,
                                 dilation=self.dilation, mask=mask)

    return TorchvisionDeformConv


def module(settings: dict[str, Any], max_keypoints: int, single_thread: bool = False):
    """The loaded, checked module for an extractor's ALIKED `settings`, once per process (pool tasks each get a
    copy of the extractor); `single_thread` in a pool worker (one process per core, one thread each)."""
    if single_thread:
        import torch

        torch.set_num_threads(1)
    shipped = ALIKED_WEIGHTS_DIR / f"aliked-{settings['variant']}.pth"
    key = (str(settings["weights"] or shipped), settings["weights_sha256"], settings["variant"], max_keypoints,
           settings["detection_threshold"])
    if key not in _MODELS:
        _MODELS[key] = load(settings["variant"], key[0], settings["weights_sha256"], max_keypoints=max_keypoints,
                            detection_threshold=settings["detection_threshold"])
    return _MODELS[key]


def detect(model, rgb: np.ndarray, settings: dict[str, Any], max_keypoints: int,
           dtype: Any = np.float16) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints (N, 2) float32 in `rgb`'s pixels, descriptors (N, D) `dtype`) of an (H, W, 3) uint8 image:
    the strongest `max_keypoints`, shared among `settings["scales"]` in proportion to their scale."""
    import torch

    variant, scales = settings["variant"], settings["scales"]
    height, width = rgb.shape[:2]
    points = [np.zeros((0, 2), np.float32)]
    descriptors = [np.zeros((0, ALIKED_DIMS[variant]), dtype)]
    for scale, budget in zip(scales, split_budget(max_keypoints, scales)):
        level = rgb if scale == 1.0 else cv2.resize(
            rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        if min(level.shape[:2]) < 8 or budget < 1:  # nothing to detect in a sliver (the network pools 32x)
            continue
        pixels = torch.from_numpy(level if level.flags.writeable else level.copy())
        with torch.inference_mode():
            image = pixels.permute(2, 0, 1)[None].float().div_(255.0)
            found = model(image.contiguous(memory_format=torch.channels_last))[0]
        order = np.argsort(-found.keypoint_scores.float().numpy(), kind="stable")[:budget]
        xy = found.keypoints.float().numpy()[order].reshape(-1, 2)
        if scale != 1.0:  # back to the resized crop's pixel frame (pixel centres, as cv2.resize maps them)
            xy = (xy + 0.5) * np.array([width / level.shape[1], height / level.shape[0]]) - 0.5
        points.append(xy.astype(np.float32))
        descriptors.append(found.descriptors.float().numpy()[order].astype(dtype).reshape(-1, ALIKED_DIMS[variant]))
    return np.ascontiguousarray(np.concatenate(points)), np.ascontiguousarray(np.concatenate(descriptors))


def settings(variant: str | None, weights: str | os.PathLike | None, weights_sha256: str | None,
                     detection_threshold: float | None, scales: Sequence[float] | None = None) -> dict[str, Any]:
    """ALIKED's part of the extractor config; the weights' checksum is the shipped file's, or a given file's own."""
    variant = variant or DEFAULT_ALIKED_VARIANT
    if variant not in ALIKED_VARIANTS:
        raise ValueError(f"unknown ALIKED variant {variant!r}; choose one of {ALIKED_VARIANTS}")
    if weights is None:
        shipped = ALIKED_SHA256[variant]
        if weights_sha256 is not None and weights_sha256 != shipped:
            raise ValueError(f"these features were made with ALIKED-{variant} weights of SHA-256 {weights_sha256}, "
                             f"but the shipped aliked-{variant}.pth has {shipped}: give those weights "
                             "(weights=<path>, `--aliked_weights`) or rebuild the features")
        weights_sha256 = shipped
    else:
        weights = str(Path(weights).expanduser().resolve())
        if weights_sha256 is None:
            try:
                weights_sha256 = file_sha256(weights)
            except OSError as error:
                raise ValueError(f"ALIKED-{variant} weights {weights}: cannot read them ({error})") from None
    threshold = DEFAULT_ALIKED_THRESHOLD if detection_threshold is None else float(detection_threshold)
    scales = [float(s) for s in (DEFAULT_ALIKED_SCALES if scales is None else scales)]
    if not scales or not all(0.0 < s <= 1.0 for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"ALIKED scales must be distinct values in (0, 1], got {scales}")
    return {"variant": variant, "weights": weights, "weights_sha256": weights_sha256, "detection_threshold": threshold,
            "scales": scales}


def split_budget(total: int, scales: Sequence[float]) -> list[int]:
    """`total` keypoints shared among pyramid levels in proportion to their scale (summing to `total`)."""
    shares = np.asarray(scales, dtype=float) / sum(scales) * total
    budgets = np.floor(shares).astype(int)
    budgets[np.argsort(budgets - shares)[: total - budgets.sum()]] += 1  # the largest remainders get the rest
    return budgets.tolist()
