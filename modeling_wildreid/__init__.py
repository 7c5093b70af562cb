"""wildreid models for Hugging Face transformers.

Importing this package registers the `wildreid` model type with AutoConfig, AutoModel (the embedder),
AutoModelForImageClassification (embedder + identity head) and AutoImageProcessor, and marks the classes
so `save_pretrained` copies their code next to the weights: the saved folder then also loads with
`trust_remote_code=True` where wildreid is not installed.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .configuration_wildreid import WildReIDConfig
from .image_processing_wildreid import ImageLoadError, WildReIDImageProcessor, crop_to_annotation, load_image
from .modeling_wildreid import (
    WildReIDForMetricLearning,
    WildReIDMetricLearningOutput,
    WildReIDModel,
    WildReIDModelOutput,
    dynamic_margins,
)

AutoConfig.register(WildReIDConfig.model_type, WildReIDConfig, exist_ok=True)
AutoModel.register(WildReIDConfig, WildReIDModel, exist_ok=True)
AutoModelForImageClassification.register(WildReIDConfig, WildReIDForMetricLearning, exist_ok=True)
AutoImageProcessor.register(
    WildReIDConfig,
    image_processor_classes={"pil": WildReIDImageProcessor, "torchvision": WildReIDImageProcessor},
    exist_ok=True,
)
WildReIDConfig.register_for_auto_class()
WildReIDModel.register_for_auto_class("AutoModel")
WildReIDForMetricLearning.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "ImageLoadError",
    "WildReIDConfig",
    "WildReIDForMetricLearning",
    "WildReIDImageProcessor",
    "WildReIDMetricLearningOutput",
    "WildReIDModel",
    "WildReIDModelOutput",
    "crop_to_annotation",
    "dynamic_margins",
    "load_image",
]
