"""Training augmentations for re-identification, applied to the uint8 crop between the processor's resize
and its normalisation (so training and inference share every other preprocessing step).

No horizontal flip by default: the left and right flanks of an animal carry different patterns, and a
mirrored left flank looks like a different individual's right flank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2


@dataclass
class AugmentationConfig:
    """Strength of each augmentation; 0 disables it.

    Args:
        shift: largest translation as a fraction of the image side.
        scale: largest relative zoom in or out.
        rotate: largest rotation in degrees.
        color: brightness / contrast / saturation jitter (hue gets a fifth of it).
        grayscale_p: probability of a greyscale copy (cameras at night, faded photos).
        blur_p: probability of a Gaussian blur (motion, focus).
        erase_p: probability of erasing a rectangle (occlusion by grass, branches, other animals).
        horizontal_flip_p: probability of a mirror image; keep 0 unless the species is left/right symmetric.
    """

    shift: float = 0.08
    scale: float = 0.15
    rotate: float = 15.0
    color: float = 0.3
    grayscale_p: float = 0.1
    blur_p: float = 0.2
    erase_p: float = 0.3
    horizontal_flip_p: float = 0.0


def build_augmentation(config: AugmentationConfig) -> v2.Transform:
    """uint8 (3, H, W) tensor -> augmented uint8 tensor of the same size."""
    steps: list = []
    if config.horizontal_flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(config.horizontal_flip_p))
    if config.shift > 0 or config.scale > 0 or config.rotate > 0:
        steps.append(
            v2.RandomAffine(
                degrees=config.rotate,
                translate=(config.shift, config.shift) if config.shift > 0 else None,
                scale=(1 - config.scale, 1 + config.scale) if config.scale > 0 else None,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    if config.color > 0:
        steps.append(v2.ColorJitter(config.color, config.color, config.color, min(0.5, config.color / 5)))
    if config.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(config.grayscale_p))
    if config.blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=config.blur_p))
    if config.erase_p > 0:
        # RandomErasing needs floats; fill with mid-grey rather than zeros so it does not mimic a black mask.
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomErasing(p=config.erase_p, scale=(0.02, 0.2), value=0.5),
            v2.ToDtype(torch.uint8, scale=True),
        ]
    return v2.Compose(steps) if steps else v2.Identity()
