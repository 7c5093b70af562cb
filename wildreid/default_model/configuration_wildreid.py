"""Configuration of wildreid models."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedConfig

from .backbone_weights import pretrained_normalization

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WildReIDConfig(PreTrainedConfig):
    r"""Configuration of a [`WildReIDModel`] (embedder) and [`WildReIDForMetricLearning`] (embedder + head).

    Args:
        backbone (`str`, *optional*, defaults to `"efficientnetv2_rw_m"`):
            timm model name of the feature extractor. The default is MiewID's backbone;
            `"tf_efficientnet_lite0"` (also lite1/lite2) has ImageNet weights available offline.
        pretrained_source (`str`, *optional*):
            Where the initial backbone weights came from (set by
            [`~WildReIDPreTrainedModel.with_imagenet_backbone`]; provenance only).
        image_size (`int`, *optional*, defaults to 440):
            Side of the square input; crops are squashed to it by [`WildReIDImageProcessor`].
        image_mean (`list[float]`, *optional*):
            Normalisation mean; `None` takes the one the backbone's ImageNet weights were trained with
            (0.5 for EfficientNet-Lite, timm's pretrained config otherwise, ImageNet's as a fallback).
        image_std (`list[float]`, *optional*):
            Normalisation standard deviation; `None` resolves like `image_mean`.
        fast_downscale (`bool`, *optional*, defaults to `True`):
            Preprocessing of large photos: reduced-scale JPEG decoding and PIL's whole-factor pre-shrink
            (see [`WildReIDImageProcessor`]); `False` resizes from full resolution in one step.
        flip_test (`bool`, *optional*, defaults to `False`):
            At inference (model in eval mode), embed each image and its mirror image and return the mean of the
            two (test-time flip, as fast-reid's `TEST.FLIP`): twice the compute, a pose-independent embedding.
            Training ignores it. Part of a gallery's embedding space, so queries are embedded the same way.
        gem_p (`float`, *optional*, defaults to 3.0):
            Initial exponent of generalised-mean pooling; learnable (1 = average pooling, large = max pooling).
        gem_eps (`float`, *optional*, defaults to 1e-6):
            Activations are clamped to at least this before the power, keeping GeM's gradient finite.
        embedding_dim (`int`, *optional*):
            `None` keeps the backbone width (MiewID: 2152 for efficientnetv2_rw_m); an integer adds a linear
            projection after the BatchNorm neck.
        num_identities (`int`, *optional*, defaults to 0):
            Number of training identities (classes of the ArcFace head); 0 for an embedder without head.
        num_subcenters (`int`, *optional*, defaults to 3):
            Sub-centres per identity (k of sub-center ArcFace); logits are the max over them.
        arcface_scale (`float`, *optional*, defaults to 30.0):
            Scale s multiplying the cosine logits.
        margin_min (`float`, *optional*, defaults to 0.2):
            Angular margin (radians) of the most frequent identity under dynamic margins.
        margin_max (`float`, *optional*, defaults to 0.5):
            Angular margin of the rarest identity; also the margin of every identity when all counts are equal.
        training_species (`list[str]`, *optional*):
            Species the weights were trained on; evaluation reports other species as zero-shot.
        training_datasets (`list[str]`, *optional*):
            Dataset specs the weights were trained on (provenance).
        id2label (`dict[int, str]`, *optional*):
            Name of each training identity (the head's logit index -> `"species/name"`), with `label2id` its
            inverse; `LABEL_i` when the names are unknown (see [`~WildReIDConfig.name_identities`]).
    """

    model_type = "wildreid"

    def __init__(
        self,
        backbone: str = "efficientnetv2_rw_m",
        pretrained_source: str | None = None,
        image_size: int = 440,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        fast_downscale: bool = True,
        flip_test: bool = False,
        gem_p: float = 3.0,
        gem_eps: float = 1e-6,
        embedding_dim: int | None = None,
        num_identities: int = 0,
        num_subcenters: int = 3,
        arcface_scale: float = 30.0,
        margin_min: float = 0.2,
        margin_max: float = 0.5,
        training_species: Sequence[str] | None = None,
        training_datasets: Sequence[str] | None = None,
        **kwargs,
    ):
        # Configs saved before the builder recorded `backbone_pretrained: false`; a true one would expect
        # construction to fetch weights, which it no longer does.
        if kwargs.pop("backbone_pretrained", False):
            raise ValueError("WildReIDConfig no longer loads weights: build the model with "
                             "WildReIDModel.with_imagenet_backbone(config) (or WildReIDForMetricLearning's)")
        if image_mean is None or image_std is None:
            default_mean, default_std = pretrained_normalization(backbone) or (IMAGENET_MEAN, IMAGENET_STD)
            image_mean = default_mean if image_mean is None else image_mean
            image_std = default_std if image_std is None else image_std
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ValueError("image_mean and image_std need 3 values each, std > 0")
        if embedding_dim is not None and embedding_dim < 1:
            raise ValueError(f"embedding_dim must be None or positive, got {embedding_dim}")
        if num_identities < 0 or num_subcenters < 1:
            raise ValueError("num_identities must be >= 0 and num_subcenters >= 1")
        if not 0 <= margin_min <= margin_max < 3.14159:
            raise ValueError(f"need 0 <= margin_min <= margin_max < pi, got {margin_min}, {margin_max}")
        self.backbone = backbone
        self.pretrained_source = pretrained_source
        self.image_size = int(image_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.fast_downscale = bool(fast_downscale)
        self.flip_test = bool(flip_test)
        self.gem_p = float(gem_p)
        self.gem_eps = float(gem_eps)
        self.embedding_dim = embedding_dim
        self.num_identities = int(num_identities)
        self.num_subcenters = int(num_subcenters)
        self.arcface_scale = float(arcface_scale)
        self.margin_min = float(margin_min)
        self.margin_max = float(margin_max)
        self.training_species = list(training_species or [])
        self.training_datasets = list(training_datasets or [])
        super().__init__(**kwargs)
        self.name_identities()

    def name_identities(self, names: Sequence[str] | None = None) -> None:
        """Set `id2label` / `label2id` to `names` (index = label id), or, without names, to `LABEL_i` wherever the
        map does not have one entry per identity (configs saved before names were kept, a head resized by
        `from_pretrained(..., num_identities=N)`)."""
        if names is not None:
            if len(names) != self.num_identities:
                raise ValueError(f"{len(names)} identity names for num_identities={self.num_identities}")
            self.id2label = {label: str(name) for label, name in enumerate(names)}
        elif self.num_identities and self.num_labels != self.num_identities:
            self.num_labels = self.num_identities
        if self.id2label is not None:
            self.label2id = {name: label for label, name in self.id2label.items()}


__all__ = ["WildReIDConfig"]
