"""What a training run needs (`TrainingConfig`), set by name from YAML files and `train.py` flags."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from hub_datasets.reported_sets import reported_rows_in

from ..embedding.embedders import check_model_reference
from ..embedding.training_record import TRAINING_CONFIG_FILE
from ..outputs import check_reusable_folder
from .checkpoints import RUN_FILE
from .augment import AugmentationConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    """Everything a training run needs; YAML files and command-line flags set these fields by name."""

    # data
    datasets: list[str] = field(default_factory=list)  # training dataset specs (hub_datasets.specs grammar)
    val_datasets: list[str] = field(default_factory=list)  # validation specs: per-species retrieval metrics
    val_across_sightings: bool = False  # validate (best step, WiSE-FT mix) without the other photos of a query's own
    # encounter, where the validation specs record encounters: matching a new sighting, not a sighting's twin photo
    data_dir: str | None = None  # raw data of the built-in species (default: $WILDREID_DATA, ../shared/data)
    min_images_per_identity: int = 3  # identities with fewer training images are dropped (MiewID: 3)
    identities_per_batch: int = 8  # P of the P x K sampler
    images_per_identity: int = 4  # K of the P x K sampler
    num_workers: int = 2  # data-loader processes per training process (capped at the available cores)
    num_threads: int | None = None  # torch CPU threads (default: $WILDREID_NUM_THREADS, else the available cores)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    # model
    backbone: str = "tf_efficientnet_lite0"
    backbone_pretrained: bool = True
    image_size: int = 224
    embedding_dim: int | None = None
    num_subcenters: int = 3
    arcface_scale: float = 30.0
    margin_min: float = 0.2
    margin_max: float = 0.5
    backbone_norm: str = "auto"  # backbone BatchNorm: frozen (pretrained statistics), batch, or auto (frozen
    # when starting from pretrained weights: P x K batches of 16 give statistics too noisy to trust)
    neck_norm: str = "running"  # BN neck normalises with: running statistics (calibrated from the data, then
    # tracking the training batches), or each batch's own
    neck_calibration_images: int = 1024  # images whose pooled features set the neck statistics before training
    init_from: str | None = None  # trained embedder (folder or Hub id) to adapt to the new data
    freeze_backbone_steps: int = 0  # steps training only neck + head before fine-tuning everything
    frozen_backbone_stages: int = 0  # the backbone's first N stages (stem = 1, then block stages, as timm groups
    # them) keep their pretrained weights throughout: steps skip their backward pass, generic features stay
    head_init: str = "auto"  # identity head starts at: prototypes (each identity's mean starting embedding),
    # random, or auto (prototypes with init_from, else random)
    weight_interpolation: list[float] = field(default_factory=list)  # WiSE-FT: after training, mixes
    # start + alpha x (fine-tuned - start) for each alpha are validated; the best by mAP (unmixed included) is saved
    # optimisation
    epochs: float | None = None
    max_steps: int | None = None  # wins over epochs when both are set
    max_train_minutes: float | None = None  # stop earlier once the run has taken this long (setup included): the
    # step reached is validated, checkpointed and saved as the last one would be, so a time budget ends with a model
    learning_rate: float = 1e-3  # head, neck and pooling
    backbone_learning_rate: float = 2e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01  # cosine decays to this fraction of each learning rate
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 5.0
    mixed_precision: str = "auto"  # auto = bf16 on CUDA, none on CPU; or no / bf16 / fp16
    channels_last: str = "auto"  # auto = on (CPU steps too: 1.5-1.8x faster here, bench/cpu_channels_last.py); or
    # true / false
    compile: bool = False  # torch.compile the model (long warm-up, faster steps on GPU)
    seed: int = 0
    # evaluation, checkpoints, outputs
    eval_steps: int = 0  # validate every N steps (0: only at the end)
    eval_batch_size: int = 64
    save_steps: int = 500  # accelerate state checkpoint every N steps (and at the end)
    save_total_limit: int = 2  # checkpoints kept (oldest deleted first)
    output_dir: str = "outputs/run"
    overwrite_output_dir: bool = False  # train a new model into a non-empty output_dir that is not this run's
    # (another tool's folder, or an earlier run's without resuming it); files of the same names are replaced,
    # nothing else there is touched: an earlier run's checkpoints are kept, never resumed from or pruned
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "latest" in output_dir
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False
    log_with: str = "auto"  # auto = tensorboard when installed; none; or an accelerate tracker name

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}; valid keys: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("augmentation"), dict):
            aug_known = {f.name for f in fields(AugmentationConfig)}
            bad = sorted(set(values["augmentation"]) - aug_known)
            if bad:
                raise ValueError(f"unknown augmentation keys: {bad}; valid keys: {sorted(aug_known)}")
            values["augmentation"] = AugmentationConfig(**values["augmentation"])
        return cls(**values)

    @property
    def validation_protocol(self) -> str:
        """How validation measures, as the run's validation JSON records it."""
        return f"leave-one-out on {', '.join(self.val_datasets)}" + (
            ", across sightings" if self.val_across_sightings else "")

    def validate(self) -> None:
        if not self.datasets:
            raise ValueError("no training datasets: set `datasets` in the config or pass --datasets")
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.backbone_norm not in ("auto", "frozen", "batch"):
            raise ValueError(f"backbone_norm must be auto, frozen or batch, got {self.backbone_norm!r}")
        if self.head_init not in ("auto", "prototypes", "random"):
            raise ValueError(f"head_init must be auto, prototypes or random, got {self.head_init!r}")
        if self.neck_norm not in ("running", "batch"):
            raise ValueError(f"neck_norm must be running or batch, got {self.neck_norm!r}")
        self._validate_numbers()
        if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1 for a in self.weight_interpolation):
            raise ValueError(f"--weight_interpolation takes ratios strictly between 0 and 1, got {self.weight_interpolation}")
        if self.weight_interpolation and not self.val_datasets:
            raise ValueError("--weight_interpolation chooses its mix on validation: set val_datasets")
        for spec in self.val_datasets:  # the best step and mix are chosen there: its figures are no longer unseen
            if reported := reported_rows_in(spec):
                logger.warning("val_datasets %s holds images of %s, a set wildreid's tables report: figures on it after "
                               "this run are not independent of what it chose", spec, reported)
        is_run = check_reusable_folder(self.output_dir, "--output_dir", marker=(RUN_FILE, TRAINING_CONFIG_FILE),
                                       allow_flag="--overwrite_output_dir", allowed=self.overwrite_output_dir)
        if is_run and not (self.resume_from_checkpoint or self.overwrite_output_dir):
            raise FileExistsError(
                f"--output_dir {self.output_dir} holds an earlier training run; nothing was changed. Pass "
                "--resume_from_checkpoint latest to continue it, or --overwrite_output_dir to train a new model there "
                "(its files of the same names are replaced; its checkpoints are kept, never resumed from or pruned)")
        if self.init_from:
            check_model_reference(self.init_from)

    def _validate_numbers(self) -> None:
        """Every numeric option within its meaningful range, named with its flag, before any work starts."""
        at_least = {"min_images_per_identity": 1, "identities_per_batch": 1, "images_per_identity": 1, "num_workers": 0,
                    "image_size": 32, "num_subcenters": 1, "neck_calibration_images": 1, "freeze_backbone_steps": 0,
                    "frozen_backbone_stages": 0,
                    "warmup_steps": 0, "gradient_accumulation_steps": 1, "eval_steps": 0, "eval_batch_size": 1,
                    "save_steps": 1, "save_total_limit": 1, "seed": 0, "max_steps": 1, "embedding_dim": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"--{name} must be an integer >= {low}, got {value!r}")
        positive = ("learning_rate", "backbone_learning_rate", "arcface_scale", "max_grad_norm", "epochs",
                    "max_train_minutes")
        for name in (*positive, "weight_decay", "min_lr_ratio", "margin_min", "margin_max"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and name in positive):
                raise ValueError(f"--{name} must be {'> 0' if name in positive else '>= 0'}, got {value!r}")
        if self.image_size > 4096:
            raise ValueError(f"--image_size must be <= 4096 pixels, got {self.image_size}")
        if self.min_lr_ratio > 1:
            raise ValueError(f"--min_lr_ratio must be between 0 and 1, got {self.min_lr_ratio}")
        if not self.margin_min <= self.margin_max < math.pi / 2:
            raise ValueError(f"need 0 <= margin_min <= margin_max < pi/2 radians, got {self.margin_min} and {self.margin_max}")


def load_config_file(path: str | os.PathLike) -> dict:
    try:
        with open(path) as handle:
            values = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of training options at the top level")
    return values
