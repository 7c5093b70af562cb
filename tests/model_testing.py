"""Small wildreid models the gallery tests build: ImageNet lite0 at 64 px, optionally with its BN neck broken."""
import torch

from modeling_wildreid import WildReIDConfig, WildReIDModel


def lite0_model(broken_neck: bool = False) -> WildReIDModel:
    """ImageNet lite0 at 64 px; `broken_neck`: every neck channel but one scaled to nothing, so the embeddings
    collapse onto one direction (a model any other validates better than)."""
    model = WildReIDModel.with_imagenet_backbone(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64))
    if broken_neck:
        with torch.no_grad():
            model.neck.norm.running_var.fill_(1e30)
            model.neck.norm.running_var[0] = 1.0
    return model
