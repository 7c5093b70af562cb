"""Optimiser parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

from modeling_wildreid import WildReIDForMetricLearning

from .config import TrainingConfig


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


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
