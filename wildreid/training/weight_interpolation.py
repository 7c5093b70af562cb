"""Weight-space interpolation between the starting and the fine-tuned embedder (WiSE-FT, Wortsman et al.,
CVPR 2022): start + alpha * (fine-tuned - start). Fine-tuning on a few thousand images of four species
sharpens those species and forgets some of what ImageNet knew (on dogs, ImageNet features beat the
fine-tuned model); the interpolated weights keep most of both at no inference cost. Which alpha wins is
decided on the validation sets, like the best step.

The start (ImageNet backbone, neck calibrated on the training images) is saved at step 0 beside the
checkpoints, so a resumed run interpolates against the same start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

START_WEIGHTS = "start_embedder.safetensors"


def save_start_weights(embedder: torch.nn.Module, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous().cpu() for key, value in embedder.state_dict().items()}
    partial = output_dir / (START_WEIGHTS + ".partial")
    save_file(state, str(partial))
    partial.replace(output_dir / START_WEIGHTS)  # never a half-written start


def load_start_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    path = output_dir / START_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: weight_interpolation needs the run's starting weights, saved "
                                f"at step 0 (this run began before they were saved; train it again from step 0)")
    return load_file(str(path))


def interpolate_state(start: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor],
                      alpha: float) -> dict[str, torch.Tensor]:
    """start + alpha * (finetuned - start) for every floating tensor (weights and BatchNorm statistics);
    integer buffers (BatchNorm's batch counters) keep the fine-tuned value."""
    if start.keys() != finetuned.keys():
        differing = sorted(start.keys() ^ finetuned.keys())
        raise ValueError(f"starting and fine-tuned weights differ in their tensors: {differing[:5]}")
    mixed = {}
    for key, tuned in finetuned.items():
        first = start[key].to(tuned.device)
        if first.shape != tuned.shape:
            raise ValueError(f"{key}: starting shape {tuple(first.shape)} != fine-tuned {tuple(tuned.shape)}")
        mixed[key] = torch.lerp(first.to(tuned.dtype), tuned, alpha) if tuned.is_floating_point() else tuned.clone()
    return mixed


def choose_interpolation(embedder: torch.nn.Module, start: dict[str, torch.Tensor], alphas: list[float],
                         validate: Callable[[float], dict], best_map: float) -> tuple[float | None, dict | None, list[dict]]:
    """Validate each alpha on `embedder` (holding the fine-tuned weights) and leave it holding the best
    (by mean validation mAP, the fine-tuned weights' `best_map` included). Returns (alpha, its metrics) --
    (None, None) when no mix beats the fine-tuned weights -- and every alpha's metrics for the history."""
    finetuned = {key: value.detach().clone() for key, value in embedder.state_dict().items()}
    best_alpha, best_metrics, tried = None, None, []
    for alpha in alphas:
        embedder.load_state_dict(interpolate_state(start, finetuned, alpha))
        metrics = validate(alpha)
        tried.append({"alpha": alpha, **metrics})
        if metrics["mean"]["map"] > best_map:
            best_alpha, best_metrics, best_map = alpha, metrics, metrics["mean"]["map"]
    embedder.load_state_dict(interpolate_state(start, finetuned, best_alpha) if best_alpha is not None else finetuned)
    return best_alpha, best_metrics, tried
