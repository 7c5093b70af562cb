"""How `wildreid adapt` trains: the recipe (`train.py --init_from` on the gallery's own photos, the cpu_real recipe
with more of the backbone trained, faster), a step budget fitted to `--budget_minutes` from step and embedding times
measured on this machine, and the plan file that makes a rerun of the same command resume instead of starting over."""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..records import RecordFormat
from .adapt_data import HOLDOUT, MIN_PHOTOS, TRAIN, GalleryImages

if TYPE_CHECKING:  # the training stack is imported when adapt runs, not by every `wildreid` command
    from ..training import TrainingConfig

PLAN = RecordFormat("wildreid-adapt-plan", 1)
PLAN_FILE = "plan.json"
RUN_DIR = "run"  # the training run's output folder (checkpoints, best model) inside the work folder

# configs/cpu_real.yaml's recipe (docs/guides/training.md) with more of the backbone trained, faster: the identity
# head started at the identities' mean embeddings and trained alone first, P x K = 8 x 2, the backbone keeping its
# BatchNorm statistics, WiSE-FT mixes validated at the end; the stem and one block stage frozen (cpu_real: three)
# and the backbone at 3e-4 (cpu_real: 1e-4). An adaptation of minutes is short: on adapt's own held-out individuals
# of lion:train and nyala:train (training-side data), from models that never saw them, held-out mAP after a
# 15-minute adapt (the default then) was lion 19.0 / 18.5 / 21.5 and nyala 13.9 / 14.4 / 14.7 (start 12.4-12.5)
# with cpu_real's settings / one stage frozen at 1e-4 / one stage at 3e-4
# (docs/guides/identification.md#adapting-to-your-species).
RECIPE: dict[str, Any] = {
    "frozen_backbone_stages": 2, "head_init": "prototypes", "learning_rate": 1e-3, "backbone_learning_rate": 3e-4,
    "identities_per_batch": 8, "images_per_identity": 2, "weight_interpolation": [0.25, 0.5, 0.75],
}
# Any of these can be overridden on the command line; the rest of TrainingConfig keeps its defaults.
OVERRIDABLE = ("learning_rate", "backbone_learning_rate", "frozen_backbone_stages", "freeze_backbone_steps",
               "weight_interpolation", "augmentation")
FREEZE_STEPS, WARMUP_STEPS = 50, 30  # cpu_real's, or a tenth of a shorter run
# The step budget: at most 20 passes over the training images (cpu_real's best step came after about 9 passes,
# at the end of a run still rising after 7; validation keeps the best step on the way), and what the time allows.
MAX_EPOCHS = 20
MIN_STEPS = 20  # fewer steps than this is not an adaptation worth measuring: the budget is refused instead
EVALUATIONS = 4  # validations on the held-out individuals during training, the best kept (plus the one at step 0)
CHECKPOINT_SECONDS = 60  # a checkpoint about every minute of steps: Ctrl-C or kill -9 loses at most that
SAFETY = 1.25  # steps are planned at 1.25x the measured step time: a shared machine's load varies
# Per held-out image, calibration's keypoints and local matching when the gallery has keypoints (SIFT at 512 px
# takes 0.07 s an image, ALIKED n16 0.49 s: bench/aliked_speed.py; matching a shortlist of 20 about as much again).
LOCAL_SECONDS_PER_IMAGE = 1.5
FIXED_SECONDS = 45  # model loading, data checks, the probe's start-up, copying and saving


def recipe(train_identities: int, overrides: dict[str, Any], max_steps: int, across_sightings: bool = False
           ) -> dict[str, Any]:
    """The training fields of this adaptation: RECIPE sized to the gallery, then the user's overrides.
    `across_sightings`: the held-out individuals are measured across sightings, so training's validation (best
    step, WiSE-FT mix) chooses across sightings too."""
    chosen = {**RECIPE, "identities_per_batch": min(RECIPE["identities_per_batch"], train_identities),
              "val_across_sightings": across_sightings,
              "min_images_per_identity": MIN_PHOTOS, "freeze_backbone_steps": min(FREEZE_STEPS, max_steps // 10),
              "warmup_steps": min(WARMUP_STEPS, max(1, max_steps // 10))}
    return {**chosen, **{key: value for key, value in overrides.items() if value is not None}}


def training_config(images: GalleryImages, work: Path, start_model: str, fields: dict[str, Any], *, image_size: int,
                    max_steps: int, eval_steps: int, save_steps: int, seed: int, batch_size: int, num_workers: int,
                    resume: bool = False, max_train_minutes: float | None = None) -> TrainingConfig:
    """The run's TrainingConfig: the gallery's split images, starting from its model (at the model's input size)."""
    from ..training import TrainingConfig

    return TrainingConfig.from_dict({
        **fields, "datasets": [images.spec(TRAIN)], "val_datasets": [images.spec(HOLDOUT)], "init_from": start_model,
        "image_size": image_size,
        "max_steps": max_steps, "eval_steps": eval_steps, "save_steps": save_steps, "save_total_limit": 1,
        "seed": seed, "eval_batch_size": batch_size, "num_workers": num_workers, "log_with": "none",
        "output_dir": str(work / RUN_DIR), "overwrite_output_dir": not resume,
        "resume_from_checkpoint": "latest" if resume else None, "max_train_minutes": max_train_minutes})


def measure_step_seconds(config: TrainingConfig, work: Path, steps: int = 3) -> float:
    """Seconds a training step of `config` takes on this machine now, data loading included: a throwaway trainer
    (head at random, neck statistics from a few images, no validation) takes a warm-up step, then `steps` timed."""
    from ..training import Trainer
    from ..training.normalisation import set_train_modes

    probe_dir = work / "probe"
    probe = replace(config, output_dir=str(probe_dir), overwrite_output_dir=True, resume_from_checkpoint=None,
                    head_init="random", neck_calibration_images=2 * config.identities_per_batch, val_datasets=[],
                    weight_interpolation=[], max_steps=steps + 1, max_train_minutes=None)
    trainer = Trainer(probe)
    trainer.setup()

    def endless():  # a small gallery's epoch can be shorter than the probe
        while True:
            yield from trainer.loader

    batches = endless()
    try:
        for step in range(steps + 1):
            if step == 1:
                started = time.perf_counter()
            set_train_modes(trainer.model, False, trainer.backbone_norm, probe.neck_norm, trainer.frozen_parameters)
            trainer.train_step(next(batches))
        return (time.perf_counter() - started) / steps
    finally:
        del batches, trainer  # ends the loader's worker processes
        shutil.rmtree(probe_dir, ignore_errors=True)


def seconds_after_training(seconds_per_image: float, holdout_images: int, gallery_images: int,
                           local_features: bool, interpolations: int) -> float:
    """What follows the training steps: the weight mixes' validations, the after measurement, re-embedding the
    gallery, calibration on the held-out images (with keypoints and local matching where the gallery has them)."""
    embedding = seconds_per_image * (holdout_images * (interpolations + 2) + gallery_images)
    return embedding + (holdout_images * LOCAL_SECONDS_PER_IMAGE if local_features else 0.0) + FIXED_SECONDS


def steps_for_budget(seconds_left: float, seconds_per_step: float, seconds_per_image: float, *, train_images: int,
                     holdout_images: int, batch_images: int, after_training: float) -> tuple[int, str]:
    """The planned number of steps and why: what fits in `seconds_left` once the prototype pass, the validations
    during training and `after_training` are paid for, at most MAX_EPOCHS passes over the training images."""
    during = seconds_per_image * (train_images + holdout_images * (EVALUATIONS + 1))
    by_time = math.floor((seconds_left - after_training - during) / (SAFETY * seconds_per_step))
    by_data = math.ceil(MAX_EPOCHS * train_images / batch_images)
    if by_time < MIN_STEPS:
        need = (after_training + during + MIN_STEPS * SAFETY * seconds_per_step) / 60
        raise ValueError(f"--budget_minutes leaves time for {max(by_time, 0)} training steps (a step takes "
                         f"{seconds_per_step:.2f} s here; embedding {seconds_per_image:.3f} s an image); at least "
                         f"{MIN_STEPS} need about {math.ceil(need)} minutes: give more, or --max_steps")
    if by_data <= by_time:
        return by_data, f"{MAX_EPOCHS} passes over the {train_images} training images"
    return by_time, f"what fits the time budget at {seconds_per_step:.2f} s a step"


def schedule(max_steps: int, seconds_per_step: float | None) -> tuple[int, int]:
    """(eval_steps, save_steps): EVALUATIONS validations, and a checkpoint about every CHECKPOINT_SECONDS (every
    fifth of the run when the step time was not measured)."""
    eval_steps = max(1, math.ceil(max_steps / EVALUATIONS))
    save_steps = (max(1, round(CHECKPOINT_SECONDS / seconds_per_step)) if seconds_per_step
                  else max(1, math.ceil(max_steps / 5)))
    return eval_steps, min(save_steps, max_steps)


def load_plan(work: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The work folder's plan when it was made for the same request (gallery model, options), else None."""
    path = work / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = PLAN.load(path)
    except ValueError:
        return None
    return plan if plan.get("request") == request else None


def save_plan(work: Path, plan: dict[str, Any]) -> None:
    partial = work / f"{PLAN_FILE}.partial"
    PLAN.save(partial, PLAN.tag(**plan))
    partial.replace(work / PLAN_FILE)
