"""Image processor for wildreid: the one preprocessing used by training, evaluation and inference.

The pipeline for every image is::

    load_image      decode, apply EXIF orientation, convert any mode to 8-bit RGB
    crop_to_annotation   cut out the animal: axis-aligned box, or a box rotated by ``theta`` about its centre
    resize          squash the crop to ``size["height"]`` x ``size["width"]`` (antialiased bilinear, PIL)
    normalize       uint8 -> float, (x / 255 - mean) / std (``do_rescale``, ``do_normalize``)

Resize policy: the crop is *squashed* to a square, aspect ratio not preserved, as MiewID does; a model
trained on squashed crops must be fed squashed crops. Training inserts its augmentations between
``resize`` and ``normalize`` (on the uint8 tensor), never replacing a step, so nothing drifts between
training and inference. ``normalize`` may run on the accelerator, which keeps host-to-device copies small.

Only PIL, numpy and torch are used here, so this file travels as Hub remote code.
"""

from __future__ import annotations

import io
import math
import os
import stat
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature, get_size_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Images above this many pixels are refused: a 20k x 20k photo decodes to 1.2 GB. JPEGs are decoded at
# reduced scale (see ``_decode``) before the check, so large camera-trap JPEGs still pass. The default is
# the size at which PIL itself refuses to open a file (2 x PIL.Image.MAX_IMAGE_PIXELS); the environment
# variable lowers it (raising it above PIL's also needs PIL.Image.MAX_IMAGE_PIXELS raised).
MAX_IMAGE_PIXELS = 178_956_970
MAX_IMAGE_PIXELS_ENV = "WILDREID_MAX_IMAGE_PIXELS"
# A crop never allocates more than this many pixels, whatever its box: larger crops are sampled at reduced
# resolution, which changes nothing downstream since every crop is squashed to image_size next.
MAX_CROP_PIXELS = 40_000_000
# No photo or crop of an animal is this many times longer than wide: a 40000x20 "photo" is a damaged or
# hostile file, and squashing it to a square (or to 512 px for keypoints, a 512x1 image) yields nothing usable.
MAX_ASPECT_RATIO = 25.0


class ImageLoadError(ValueError):
    """An image could not be decoded or cropped; the message names the file and the reason."""


def max_image_pixels() -> int:
    """The pixel limit: ``$WILDREID_MAX_IMAGE_PIXELS`` when set, else ``MAX_IMAGE_PIXELS``."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV)
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${MAX_IMAGE_PIXELS_ENV} must be a positive integer (pixels), got {text!r}")
    return value


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, dict):
        return source.get("path") or "<image bytes>"
    if isinstance(source, (bytes, bytearray)):
        return "<image bytes>"
    return f"<{type(source).__name__}>"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. High-bit-depth greyscale is rescaled, not clipped; transparency becomes black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            scaled = array / 257.0
        else:
            low, high = float(array.min()), float(array.max())
            scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """HWC / CHW / HW array (uint8, uint16 or float in [0, 1]) -> PIL image."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == np.uint16:
        return Image.fromarray(array.astype(np.uint16), mode="I;16") if array.ndim == 2 else Image.fromarray(
            (array // 257).astype(np.uint8)
        )
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array.astype(np.uint8))


def _check_regular_file(path: str | os.PathLike) -> None:
    """Only a regular file is opened: a FIFO would block the reader forever, a device never ends."""
    mode = os.stat(path).st_mode  # FileNotFoundError is reported by the caller
    if stat.S_ISDIR(mode):
        raise ImageLoadError("is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise ImageLoadError("not a regular file (a pipe, socket or device); refused without reading it")


def _check_shape(width: int, height: int, what: str = "image") -> None:
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageLoadError(f"{what} is {width}x{height} pixels: its aspect ratio exceeds {MAX_ASPECT_RATIO:g}:1, "
                             "not a usable photo of an animal")


def _decode(data: bytes | str | os.PathLike, draft_size: int | None) -> Image.Image:
    if not isinstance(data, (bytes, bytearray)):
        _check_regular_file(data)
    image = Image.open(data if not isinstance(data, (bytes, bytearray)) else io.BytesIO(data))
    _check_shape(image.width, image.height)
    if draft_size and image.format == "JPEG":
        # DCT-domain downscaling: decodes a 6000 px JPEG at 1/2..1/8 scale for a fraction of the cost.
        image.draft("RGB", (draft_size, draft_size))
    limit = max_image_pixels()
    if image.width * image.height > limit:
        raise ImageLoadError(f"{image.width}x{image.height} pixels exceeds the {limit:,} pixel limit "
                             f"(${MAX_IMAGE_PIXELS_ENV})")
    image.load()
    return image


def load_image(source: Any, *, draft_size: int | None = None) -> Image.Image:
    """Decode ``source`` into an RGB PIL image with EXIF orientation applied.

    ``source`` may be a file path, encoded bytes, a ``datasets`` Image dict (``{"bytes", "path"}``), a PIL
    image, a numpy array (HWC or CHW; uint8, uint16, or float in [0, 1]) or a torch tensor (CHW or HWC).
    ``draft_size`` lets JPEGs decode at a reduced scale that still has at least that many pixels on the
    short side; leave it ``None`` when a bounding box refers to full-resolution pixel coordinates.
    Raises :class:`ImageLoadError` naming the file for missing, corrupt, truncated or oversized images, for
    paths that are not regular files (a FIFO is refused without being opened) and for images whose aspect
    ratio exceeds ``MAX_ASPECT_RATIO``.
    """
    name = _describe(source)
    try:
        if isinstance(source, dict):
            data = source.get("bytes") or source.get("path")
            if data is None:
                raise ImageLoadError("image dict has neither 'bytes' nor 'path'")
            image = _decode(data, draft_size)
        elif isinstance(source, (str, os.PathLike, bytes, bytearray)):
            image = _decode(source, draft_size)
        else:  # in memory: the shape rule `_decode` applies to files
            if isinstance(source, Image.Image):
                image = source
            elif isinstance(source, torch.Tensor):
                image = _array_to_pil(source.detach().cpu().numpy())
            elif isinstance(source, np.ndarray):
                image = _array_to_pil(source)
            else:
                raise ImageLoadError(f"unsupported image type {type(source).__name__}")
            _check_shape(image.width, image.height)
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except ImageLoadError as error:
        raise ImageLoadError(f"{name}: {error}") from None
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: file not found") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not a readable image (corrupt or unknown format)") from None
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: too many pixels, refused as a possible decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{name}: cannot decode image ({error})") from None


def crop_to_annotation(
    image: Image.Image, bbox: Sequence[float] | None = None, theta: float = 0.0, *, name: str = "image"
) -> Image.Image:
    """Cut the annotated animal out of ``image``.

    ``bbox`` is ``[x, y, w, h]`` in pixels of the (EXIF-oriented) image; ``None`` keeps the whole image.
    ``theta`` rotates the box about its centre by that many radians, clockwise on screen (the image y axis
    points down), as in Wildbook annotations; the output is the box's content, upright, ``w`` x ``h``.
    Boxes reaching past the border are clipped (axis-aligned) or filled with black (rotated). Empty or
    degenerate boxes, and boxes entirely outside the image, raise :class:`ImageLoadError` naming ``name``.
    Memory is bounded before anything is allocated: a crop larger than ``max(4 x the image's pixels, 1M)``
    or ``MAX_CROP_PIXELS`` is sampled at the reduced resolution that fits (the caller squashes it anyway).
    """
    if bbox is None:
        return image
    if len(bbox) != 4 or not all(math.isfinite(float(v)) for v in bbox):
        raise ImageLoadError(f"{name}: bbox must be 4 finite numbers [x, y, w, h], got {list(bbox)}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 1 or h < 1:
        raise ImageLoadError(f"{name}: degenerate bbox {[x, y, w, h]} (width and height must be >= 1 pixel)")
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise ImageLoadError(f"{name}: degenerate bbox {[x, y, w, h]} (aspect ratio above {MAX_ASPECT_RATIO:g}:1)")
    theta = float(theta or 0.0)
    if not math.isfinite(theta):
        raise ImageLoadError(f"{name}: theta must be finite, got {theta}")
    if abs(math.remainder(theta, 2 * math.pi)) < 1e-6:
        left, top = max(0.0, x), max(0.0, y)
        right, bottom = min(float(image.width), x + w), min(float(image.height), y + h)
        if right - left < 1 or bottom - top < 1:
            raise ImageLoadError(f"{name}: bbox {[x, y, w, h]} lies outside the {image.width}x{image.height} image")
        box = (round(left), round(top), round(right), round(bottom))
        scale = _crop_scale(box[2] - box[0], box[3] - box[1], MAX_CROP_PIXELS)
        if scale == 1.0:
            return image.crop(box)
        size = (max(1, math.floor((box[2] - box[0]) * scale)), max(1, math.floor((box[3] - box[1]) * scale)))
        return image.resize(size, resample=Image.Resampling.BILINEAR, box=box)
    cx, cy = x + w / 2, y + h / 2
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    corners = [(cx + dx * cos_t - dy * sin_t, cy + dx * sin_t + dy * cos_t) for dx in (-w / 2, w / 2) for dy in (-h / 2, h / 2)]
    if max(p[0] for p in corners) <= 0 or min(p[0] for p in corners) >= image.width or max(
        p[1] for p in corners
    ) <= 0 or min(p[1] for p in corners) >= image.height:
        raise ImageLoadError(f"{name}: rotated bbox {[x, y, w, h]} (theta={theta}) lies outside the image")
    # Everything of the box outside the image is black, so a box larger than the image carries no more
    # detail than the image: bound the output by the image's size as well as by MAX_CROP_PIXELS.
    scale = _crop_scale(w, h, min(MAX_CROP_PIXELS, max(4 * image.width * image.height, 1_000_000)))
    fit = round if scale == 1.0 else math.floor  # flooring keeps a reduced crop within its budget
    out_w, out_h = max(1, fit(w * scale)), max(1, fit(h * scale))
    # PIL's affine maps output (u, v) to input (a*u + b*v + c, d*u + e*v + f): rotate output offsets from
    # the crop centre by theta (one output pixel = 1/scale input pixels) and add the box centre.
    step = 1.0 / scale
    coefficients = (
        cos_t * step, -sin_t * step, cx - (cos_t * out_w / 2 - sin_t * out_h / 2) * step,
        sin_t * step, cos_t * step, cy - (sin_t * out_w / 2 + cos_t * out_h / 2) * step,
    )
    return image.transform((out_w, out_h), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR)


def _crop_scale(width: float, height: float, max_pixels: int) -> float:
    """1.0, or the factor shrinking a ``width`` x ``height`` crop to at most ``max_pixels`` pixels."""
    pixels = float(width) * float(height)
    return 1.0 if pixels <= max_pixels else math.sqrt(max_pixels / pixels)


class WildReIDImageProcessor(BaseImageProcessor):
    r"""Turns raw images (+ optional annotation boxes) into the ``pixel_values`` a wildreid model expects.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"height": 440, "width": 440}`):
            Model input size; crops are squashed to it (see the module docstring). An int means a square.
            Configs saved before this argument existed name it `image_size` (an int); they still load.
        do_resize (`bool`, *optional*, defaults to `True`):
            Squash each crop to `size`; without it every crop must already have one common size.
        resample (`int`, *optional*, defaults to `PIL.Image.Resampling.BILINEAR`):
            PIL resampling filter of the resize (antialiased when shrinking).
        do_rescale (`bool`, *optional*, defaults to `True`):
            Scale uint8 pixels by `rescale_factor` (1/255: to [0, 1]).
        rescale_factor (`float`, *optional*, defaults to 1/255):
        do_normalize (`bool`, *optional*, defaults to `True`):
            Subtract `image_mean` and divide by `image_std` after rescaling.
        image_mean (`list[float]`, *optional*, defaults to ImageNet mean):
            Per-channel mean; must match the backbone's pretraining.
        image_std (`list[float]`, *optional*, defaults to ImageNet std):
            Per-channel standard deviation pixels are divided by.
        fast_downscale (`bool`, *optional*, defaults to `True`):
            Decode large JPEGs at reduced scale (DCT draft) and let PIL pre-shrink by whole factors before
            the filtered resize: several times faster on camera photos, at the price of pixels that differ
            slightly from one full-resolution resize. Converted MiewID models set it to `False` to
            reproduce MiewID's preprocessing exactly; a model must be used with the setting it was trained with.

    Call it as ``processor(images, bboxes=None, thetas=None, return_tensors="pt")``; ``images`` is one image
    or a list (paths, bytes, PIL, numpy, torch), ``bboxes`` one ``[x, y, w, h]`` or ``None`` per image.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: dict[str, int] | int | None = None,
        do_resize: bool = True,
        resample: int = Image.Resampling.BILINEAR,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        fast_downscale: bool = True,
        **kwargs,
    ):
        legacy_size = kwargs.pop("image_size", None)
        super().__init__(**kwargs)
        self.size = get_size_dict(size if size is not None else legacy_size or 440)
        self.do_resize = bool(do_resize)
        self.resample = int(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.fast_downscale = bool(fast_downscale)

    @property
    def image_size(self) -> int:
        """Side of the square input (wildreid models are square)."""
        if self.size["height"] != self.size["width"]:
            raise ValueError(f"input size {self.size} is not square")
        return self.size["height"]

    @classmethod
    def from_config(cls, config) -> "WildReIDImageProcessor":
        """The processor matching a :class:`WildReIDConfig` (size, mean and std travel with the weights)."""
        return cls(size={"height": config.image_size, "width": config.image_size}, image_mean=config.image_mean,
                   image_std=config.image_std, fast_downscale=getattr(config, "fast_downscale", True))

    def crop(self, image: Any, bbox: Sequence[float] | None = None, theta: float = 0.0) -> Image.Image:
        """Load any image input and cut out the annotated animal (RGB PIL image)."""
        # Without a box the whole image is squashed to `size`, so JPEG draft decoding is safe.
        resized_whole = bbox is None and self.fast_downscale and self.do_resize
        pil = load_image(image, draft_size=max(self.size["height"], self.size["width"]) if resized_whole else None)
        return crop_to_annotation(pil, bbox, theta, name=_describe(image))

    def resize(self, image: Image.Image) -> torch.Tensor:
        """Squash a crop to `size` (when `do_resize`); returns a uint8 tensor (3, H, W)."""
        size = (self.size["width"], self.size["height"])
        if self.do_resize and image.size != size:
            image = image.resize(size, resample=self.resample, reducing_gap=3.0 if self.fast_downscale else None)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float32, rescaled and normalised as the flags say (works on any device)."""
        # Dividing by 1 / factor keeps the default bit-identical to the historical `x / 255`.
        values = pixels.float() / (1 / self.rescale_factor) if self.do_rescale else pixels.float()
        if not self.do_normalize:
            return values
        mean = torch.tensor(self.image_mean, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.image_std, device=pixels.device).view(3, 1, 1)
        return (values - mean) / std

    def to_uint8(self, image: Any, bbox: Sequence[float] | None = None, theta: float = 0.0) -> torch.Tensor:
        """Crop + resize: the geometric half of preprocessing, where training inserts augmentation."""
        return self.resize(self.crop(image, bbox, theta))

    def preprocess(
        self,
        images: Any,
        bboxes: Sequence[Sequence[float] | None] | Sequence[float] | None = None,
        thetas: Sequence[float] | float | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        if kwargs:
            raise TypeError(f"unexpected arguments for WildReIDImageProcessor: {sorted(kwargs)}")
        if not isinstance(images, (list, tuple)):
            images = [images]
            bboxes = None if bboxes is None else [bboxes]
            thetas = None if thetas is None else [thetas]
        bboxes = [None] * len(images) if bboxes is None else list(bboxes)
        thetas = [0.0] * len(images) if thetas is None else list(thetas)
        if not (len(bboxes) == len(thetas) == len(images)):
            raise ValueError(f"got {len(images)} images, {len(bboxes)} bboxes and {len(thetas)} thetas; they must match")
        crops = [self.to_uint8(i, b, t) for i, b, t in zip(images, bboxes, thetas)]
        if len({tuple(crop.shape) for crop in crops}) > 1:
            raise ValueError(f"do_resize=False needs crops of one size, got {sorted({tuple(c.shape[1:]) for c in crops})}")
        pixels = torch.stack(crops)
        pixel_values = self.normalize(pixels)
        if return_tensors in (None, "np"):
            pixel_values = pixel_values.numpy()
        elif return_tensors != "pt":
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        return BatchFeature(data={"pixel_values": pixel_values})

    def __call__(self, images: Any, *args, **kwargs) -> BatchFeature:
        return self.preprocess(images, *args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # The model's config.json names this class in its auto_map. Naming it here too would make
        # transformers' pipelines go looking for a matching video processor and prompt about remote code.
        for key in ("_valid_processor_keys", "_valid_kwargs_names", "image_processor_type", "auto_map"):
            output.pop(key, None)
        return output


__all__ = ["ImageLoadError", "WildReIDImageProcessor", "crop_to_annotation", "load_image", "max_image_pixels"]
