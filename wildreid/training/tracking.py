"""Experiment trackers (TensorBoard when installed): which one a run logs to, and config values in the flat
form trackers accept."""

from __future__ import annotations

from accelerate.utils import is_tensorboard_available


def resolve_tracker(log_with: str) -> str | None:
    """`log_with` as accelerate's `log_with`: "auto" is TensorBoard when installed, "none" is no tracker."""
    if log_with == "auto":
        return "tensorboard" if is_tensorboard_available() else None
    return None if log_with == "none" else log_with


def flat_for_tracker(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_for_tracker(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[prefix + key] = value
        else:
            flat[prefix + key] = str(value)
    return flat
