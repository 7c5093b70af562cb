"""Optimiser parameter groups: own learning rates for backbone and head, no weight decay on norms and biases."""

from __future__ import annotations

from modeling_wildreid import WildReIDForMetricLearning

from .config import TrainingConfig


def parameter_groups(model: WildReIDForMetricLearning, config: TrainingConfig) -> list[dict]:
    """Backbone and the rest (pooling, neck, head) get their own learning rates; no weight decay on norms,
    biases and the GeM exponent."""
    groups = {key: {"params": [], "lr": lr, "weight_decay": wd} for key, lr, wd in [
        ("backbone", config.backbone_learning_rate, config.weight_decay),
        ("backbone_no_decay", config.backbone_learning_rate, 0.0),
        ("head", config.learning_rate, config.weight_decay),
        ("head_no_decay", config.learning_rate, 0.0),
    ]}
    for name, parameter in model.named_parameters():
        part = "backbone" if name.startswith("wildreid.backbone.") else "head"
        no_decay = parameter.ndim <= 1 or name.endswith(".bias")
        groups[part + ("_no_decay" if no_decay else "")]["params"].append(parameter)
    return [group for group in groups.values() if group["params"]]
