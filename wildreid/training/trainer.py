"""Multi-species metric-learning training with Accelerate: one script for a laptop CPU, one GPU or many
GPUs/nodes; resumable to the exact same weights; few-shot adaptation of a trained embedder.

`train.py` parses arguments into a :class:`TrainingConfig` and calls :func:`train`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from datasets import Dataset

from hub_datasets.specs import load_specs
from modeling_wildreid import WildReIDConfig, WildReIDForMetricLearning, WildReIDImageProcessor, WildReIDModel

from .augment import AugmentationConfig, build_augmentation
from .data import ReIDImageDataset, SpeciesBalancedBatchSampler, collate, filter_min_images, ignore_stop_signals
from .embedding import embed_dataset
from .evaluation.protocols import leave_one_out_by_species
from .model_card import training_card, write_model_card

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
VALIDATION_RESULTS = "validation_results.json"  # best validation, in evaluate.py's results shape
TRAINING_SUMMARY = "training_summary.json"  # every validation, best step, data sizes


@dataclass
class TrainingConfig:
    """Everything a training run needs; YAML files and command-line flags set these fields by name."""

    # data
    datasets: list[str] = field(default_factory=list)  # training dataset specs (hub_datasets.specs grammar)
    val_datasets: list[str] = field(default_factory=list)  # validation specs: per-species retrieval metrics
    data_dir: str | None = None  # raw data of the built-in species (default: $WILDREID_DATA, ../shared/data)
    min_images_per_identity: int = 3  # identities with fewer training images are dropped (MiewID: 3)
    identities_per_batch: int = 8  # P of the P x K sampler
    images_per_identity: int = 4  # K of the P x K sampler
    num_workers: int = 2  # data-loader processes per training process
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
    # optimisation
    epochs: float | None = None
    max_steps: int | None = None  # wins over epochs when both are set
    learning_rate: float = 1e-3  # head, neck and pooling
    backbone_learning_rate: float = 2e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01  # cosine decays to this fraction of each learning rate
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 5.0
    mixed_precision: str = "auto"  # auto = bf16 on CUDA, none on CPU; or no / bf16 / fp16
    channels_last: str = "auto"  # auto = on CUDA only; or true / false
    compile: bool = False  # torch.compile the model (long warm-up, faster steps on GPU)
    seed: int = 0
    # evaluation, checkpoints, outputs
    eval_steps: int = 0  # validate every N steps (0: only at the end)
    eval_batch_size: int = 64
    save_steps: int = 500  # accelerate state checkpoint every N steps (and at the end)
    save_total_limit: int = 2  # checkpoints kept (oldest deleted first)
    output_dir: str = "outputs/run"
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
        if self.neck_norm not in ("running", "batch"):
            raise ValueError(f"neck_norm must be running or batch, got {self.neck_norm!r}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError("gradient_accumulation_steps must be >= 1")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or weights; the run stopped without saving them."""


@dataclass
class TrainingProgress:
    """Loop position and best score, saved in every checkpoint next to model, optimiser and RNG states."""

    step: int = 0
    best_map: float = -1.0
    best_step: int = -1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


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


def find_checkpoint(output_dir: Path, requested: str) -> Path:
    if requested != "latest":
        path = Path(requested)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    candidates = sorted(
        (int(m.group(1)), p) for p in (output_dir / "checkpoints").glob("checkpoint-*")
        if (m := CHECKPOINT_PATTERN.match(p.name)) and (p / "wildreid_progress.json").is_file()
    )
    if not candidates:
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir / 'checkpoints'}")
    return candidates[-1][1]


def prototype_head_weights(embeddings: np.ndarray, labels: np.ndarray, num_identities: int, num_subcenters: int,
                           seed: int) -> torch.Tensor:
    """Few-shot head initialisation: each identity's sub-centres start at its mean embedding (its
    prototype), plus a small jitter so the k sub-centres can drift apart."""
    dim = embeddings.shape[1]
    prototypes = np.zeros((num_identities, dim), np.float32)
    np.add.at(prototypes, labels, embeddings)
    prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
    weights = torch.from_numpy(prototypes).repeat_interleave(num_subcenters, dim=0)
    jitter = torch.randn(weights.shape, generator=torch.Generator().manual_seed(seed)) * 0.01
    return torch.nn.functional.normalize(weights + jitter, dim=1)


class Trainer:
    """One training run; construct, then call :meth:`run`. Everything that can fail on the data or the
    configuration fails in the constructor, before the first expensive step."""

    def __init__(self, config: TrainingConfig):
        config.validate()
        self.config = config
        self.output_dir = Path(config.output_dir)
        cuda = torch.cuda.is_available()
        mixed = config.mixed_precision if config.mixed_precision != "auto" else ("bf16" if cuda else "no")
        self.channels_last = cuda if config.channels_last == "auto" else str(config.channels_last).lower() == "true"
        tracker = config.log_with
        if tracker == "auto":
            tracker = "tensorboard" if _tensorboard_available() else None
        elif tracker == "none":
            tracker = None
        self.accelerator = Accelerator(
            mixed_precision=mixed,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=tracker,
            project_dir=str(self.output_dir),
            step_scheduler_with_optimizer=False,
            # Few-shot freezing leaves the backbone without gradients for a while: DDP must allow that.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.freeze_backbone_steps > 0)],
        )
        set_seed(config.seed)
        self.print = self.accelerator.print
        starts_pretrained = config.backbone_pretrained or config.init_from is not None
        self.backbone_norm = config.backbone_norm if config.backbone_norm != "auto" else (
            "frozen" if starts_pretrained else "batch")
        self._load_data()
        self._build_model()

    # ---- setup -------------------------------------------------------------------------------------------

    def _load_data(self) -> None:
        config = self.config
        train = load_specs(config.datasets, data_dir=config.data_dir)
        self.train_data, self.identities = filter_min_images(train, config.min_images_per_identity)
        self.val_data = load_specs(config.val_datasets, data_dir=config.data_dir) if config.val_datasets else None
        self.species = sorted(set(self.identities.species))
        label_of = self.identities.label_of
        self.train_labels = [label_of[name] for name in self.train_data["identity"]]

    def _build_model(self) -> None:
        config = self.config
        if config.init_from:
            embedder = WildReIDModel.from_pretrained(config.init_from)
            model_config = copy.deepcopy(embedder.config)
            model_config.update({
                "num_identities": len(self.identities.names), "num_subcenters": config.num_subcenters,
                "arcface_scale": config.arcface_scale, "margin_min": config.margin_min, "margin_max": config.margin_max,
            })
            if config.image_size != model_config.image_size:
                self.print(f"init_from model uses {model_config.image_size}px inputs; image_size={config.image_size} ignored")
            model = WildReIDForMetricLearning(model_config)
            model.wildreid.load_state_dict(embedder.state_dict())
            self.head_from_prototypes = True
        else:
            model_config = WildReIDConfig(
                backbone=config.backbone, backbone_pretrained=config.backbone_pretrained,
                image_size=config.image_size, embedding_dim=config.embedding_dim,
                num_identities=len(self.identities.names), num_subcenters=config.num_subcenters,
                arcface_scale=config.arcface_scale, margin_min=config.margin_min, margin_max=config.margin_max,
            )
            model = WildReIDForMetricLearning(model_config)
            self.head_from_prototypes = False
        model.config.training_species = self.species
        model.config.training_datasets = list(config.datasets)
        model.set_margins_from_counts(self.identities.counts)
        self.model = model
        self.processor = WildReIDImageProcessor.from_config(model.config)

    # ---- loop --------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Data loader, prepared model / optimiser / scheduler, and the resumed position."""
        config, accelerator = self.config, self.accelerator
        self.sampler = SpeciesBalancedBatchSampler(
            self.train_data["identity"], self.train_data["species"],
            config.identities_per_batch, config.images_per_identity, seed=config.seed,
        )
        dataset = ReIDImageDataset(self.train_data, self.processor, self.train_labels,
                                   augment=build_augmentation(config.augmentation))
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=config.num_workers, collate_fn=collate,
            worker_init_fn=ignore_stop_signals,
            pin_memory=torch.cuda.is_available(), persistent_workers=config.num_workers > 0,
            prefetch_factor=4 if config.num_workers > 0 else None,
        )
        if not config.resume_from_checkpoint:  # (a resumed run restores neck and head from its checkpoint)
            # Prototypes need every training image; the neck statistics then come from that same pass.
            n_rows = len(self.train_data) if self.head_from_prototypes else min(config.neck_calibration_images,
                                                                                len(self.train_data))
            rows = np.linspace(0, len(self.train_data) - 1, num=n_rows).round().astype(int)
            pooled, indices = pooled_features(self.model.wildreid, self.train_data, self.processor, rows,
                                              batch_size=config.eval_batch_size, num_workers=config.num_workers,
                                              accelerator=accelerator)
            calibrate_neck_statistics(self.model.wildreid.neck.norm, pooled)
            if self.head_from_prototypes:
                self._init_head_from_prototypes(pooled, indices)
        if config.neck_norm == "running":
            track_neck_statistics(self.model.wildreid.neck.norm)
        model = self.model
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(parameter_groups(model, config))
        model, self.optimizer, self.loader = accelerator.prepare(model, optimizer, loader)
        self.prepared_model = torch.compile(model) if config.compile else model
        batches_per_epoch = len(self.loader) // config.gradient_accumulation_steps
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * batches_per_epoch))
        warmup = min(config.warmup_steps, max(1, self.total_steps // 5))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(warmup, self.total_steps, config.min_lr_ratio))
        self.scheduler = accelerator.prepare(scheduler)
        self.progress = TrainingProgress()
        accelerator.register_for_checkpointing(self.progress)
        accelerator.register_save_state_pre_hook(_contiguous_weights)
        if config.resume_from_checkpoint:
            checkpoint = find_checkpoint(self.output_dir, config.resume_from_checkpoint)
            accelerator.load_state(str(checkpoint))
            self.print(f"resumed from {checkpoint} at step {self.progress.step}")

    def train_step(self, batch: dict) -> torch.Tensor:
        """Forward, backward and (at accumulation boundaries) clip, optimiser and scheduler step."""
        accelerator, model = self.accelerator, self.prepared_model
        with accelerator.accumulate(model):
            pixels = self.processor.normalize(batch["pixel_values"])
            if self.channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            loss = model(pixel_values=pixels, labels=batch["labels"]).loss
            if not torch.isfinite(loss):
                raise NonFiniteLossError(self._non_finite_message(self.progress, f"loss is {loss.item()}"))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
                if grad_norm is not None and not torch.isfinite(grad_norm):
                    raise NonFiniteLossError(self._non_finite_message(self.progress, "gradient norm is not finite"))
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def run(self) -> dict:
        self.setup()
        config, accelerator, progress = self.config, self.accelerator, self.progress
        model, loader, total_steps = self.prepared_model, self.loader, self.total_steps
        self._write_resolved_config(total_steps)
        if accelerator.is_main_process:
            accelerator.init_trackers("wildreid", config=_flat_for_tracker(asdict(config)))
        self.print(
            f"training {len(self.identities.names)} identities / {len(self.train_data)} images over species "
            f"{', '.join(self.species)}; {total_steps} steps of {self.sampler.p}x{self.sampler.k} images "
            f"x {accelerator.num_processes} processes x {config.gradient_accumulation_steps} accumulation"
        )
        history = []
        if config.init_from and progress.step == 0 and self.val_data is not None:
            before = self.validate(model, step=0, label="before adaptation")
            history.append({"step": 0, "phase": "before adaptation", **before})

        from tqdm.auto import tqdm

        stop_signal = _StopSignal()
        speeds: list[float] = []  # images/s of each logging window, validation and checkpoints excluded
        window_start, window_images = time.perf_counter(), 0
        bar = tqdm(total=total_steps, initial=progress.step, disable=not accelerator.is_local_main_process,
                   desc="training", dynamic_ncols=True)
        while progress.step < total_steps:
            consumed = progress.step * config.gradient_accumulation_steps
            epoch, offset = divmod(consumed, len(loader))
            self.sampler.use_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, offset) if offset else loader
            for batch in epoch_loader:
                frozen = progress.step < config.freeze_backbone_steps
                _set_train_modes(accelerator.unwrap_model(model), frozen, self.backbone_norm, config.neck_norm)
                for failure in batch["failures"]:
                    logger.warning("training skips %s: %s", failure.file, failure.reason)
                loss = self.train_step(batch)
                window_images += len(batch["labels"]) * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                progress.step += 1
                bar.update(1)
                done = progress.step >= total_steps
                if progress.step % 10 == 0 or done:
                    speed = window_images / (time.perf_counter() - window_start)
                    speeds.append(speed)
                    lr = self.scheduler.get_last_lr()
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr[0]:.2e}", img_s=f"{speed:.1f}")
                    accelerator.log({"train/loss": loss.item(), "train/lr_backbone": lr[0], "train/lr_head": lr[-1],
                                     "train/images_per_second": speed}, step=progress.step)
                    window_start, window_images = time.perf_counter(), 0
                if self.val_data is not None and (done or (config.eval_steps and progress.step % config.eval_steps == 0)):
                    metrics = self.validate(model, progress.step)
                    history.append({"step": progress.step, **metrics})
                    if metrics["mean"]["map"] > progress.best_map:
                        progress.best_map, progress.best_step = metrics["mean"]["map"], progress.step
                        self._save_embedder(model, self.output_dir)
                        self._write_json(VALIDATION_RESULTS, {**metrics, "model": str(self.output_dir),
                                                              "protocol": f"leave-one-out on {', '.join(config.val_datasets)}",
                                                              "step": progress.step})
                    window_start, window_images = time.perf_counter(), 0
                if done or progress.step % config.save_steps == 0 or stop_signal.received:
                    self._save_checkpoint(model, progress)
                    window_start, window_images = time.perf_counter(), 0
                if stop_signal.received:
                    bar.close()
                    self.print(f"stopped by signal {stop_signal.received} at step {progress.step}; "
                               f"resume with --resume_from_checkpoint latest")
                    accelerator.end_training()
                    raise SystemExit(128 + stop_signal.received)
                if done:
                    break
        bar.close()
        if self.val_data is None:
            self._save_embedder(model, self.output_dir)
        # The first window includes loader start-up; report the steady state when there is one.
        steady = speeds[1:] or speeds
        summary = self._finish(history, progress, model, float(np.median(steady)) if steady else None)
        accelerator.end_training()
        return summary

    # ---- pieces ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _init_head_from_prototypes(self, pooled: torch.Tensor, indices: np.ndarray) -> None:
        """Start each identity's sub-centres at its mean embedding under the starting backbone and the neck
        as calibrated on this data (the saved neck's statistics belong to the old species: under them the new
        species' embeddings all point one way and so would the prototypes)."""
        neck = self.model.wildreid.neck
        was_training = neck.training
        neck.eval()
        device = next(neck.parameters()).device
        embeddings = torch.cat([torch.nn.functional.normalize(neck(chunk.to(device)), dim=-1).cpu()
                                for chunk in pooled.split(4096)])
        neck.train(was_training)
        labels = np.asarray(self.train_labels)[indices]
        head = self.model.head
        # The head compares against the un-normalised neck output, whose direction the embedding shares.
        head.weight.data.copy_(prototype_head_weights(embeddings.numpy(), labels, head.num_identities,
                                                      head.num_subcenters, self.config.seed))

    def validate(self, model, step: int, label: str = "validation") -> dict:
        embedder = self.accelerator.unwrap_model(model)
        embedder = getattr(embedder, "_orig_mod", embedder).wildreid
        embedded = embed_dataset(embedder, self.val_data, self.processor, batch_size=self.config.eval_batch_size,
                                 num_workers=self.config.num_workers, accelerator=self.accelerator, desc=label)
        results = leave_one_out_by_species(self.val_data, embedded, training_species=self.species)
        self.print(f"step {step} {label}: " + ", ".join(
            f"{name} top1 {m['top1']:.3f} mAP {m['map']:.3f}" for name, m in results["species"].items()
        ) + f" | mean top1 {results['mean']['top1']:.3f} mAP {results['mean']['map']:.3f}")
        self.accelerator.log({f"val/{name}/{key}": m[key] for name, m in results["species"].items()
                              for key in ("top1", "map")} | {"val/mean_map": results["mean"]["map"]}, step=step)
        return results

    def _non_finite_message(self, progress: TrainingProgress, what: str) -> str:
        last = _latest_checkpoint_or_none(self.output_dir)
        return (f"{what} at step {progress.step + 1}; stopped without saving. Last good checkpoint: "
                f"{last or 'none yet'}. Lower the learning rate or check the data.")

    def _save_checkpoint(self, model, progress: TrainingProgress) -> None:
        accelerator = self.accelerator
        if not _all_finite(accelerator.unwrap_model(model)):
            raise NonFiniteLossError(self._non_finite_message(progress, "weights became non-finite"))
        directory = self.output_dir / "checkpoints" / f"checkpoint-{progress.step}"
        accelerator.wait_for_everyone()
        accelerator.save_state(str(directory))
        if accelerator.is_main_process:
            # Written last: a checkpoint without it was interrupted mid-save and is never resumed from.
            (directory / "wildreid_progress.json").write_text(json.dumps(progress.state_dict()))
            kept = sorted((int(m.group(1)), p) for p in directory.parent.iterdir()
                          if (m := CHECKPOINT_PATTERN.match(p.name)))
            for _, old in kept[: max(0, len(kept) - self.config.save_total_limit)]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def _save_embedder(self, model, directory: Path) -> None:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            embedder = getattr(unwrapped, "_orig_mod", unwrapped).wildreid
            # safetensors stores contiguous tensors only; channels_last convolution weights are not.
            state = {k: v.contiguous() for k, v in embedder.state_dict().items()}
            embedder.save_pretrained(directory, state_dict=state)
        accelerator.wait_for_everyone()

    def _write_resolved_config(self, total_steps: int) -> None:
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            resolved = {**asdict(self.config), "resolved_total_steps": total_steps,
                        "num_processes": self.accelerator.num_processes,
                        "mixed_precision": self.accelerator.mixed_precision}
            (self.output_dir / "training_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    def _write_json(self, name: str, values: dict) -> None:
        if self.accelerator.is_main_process:
            (self.output_dir / name).write_text(json.dumps(values, indent=2))

    def _replica_fingerprints(self, model) -> list[list[float]]:
        """Per-process (sum, sum of squares) of all weights: distributed replicas must agree exactly."""
        params = [p.detach().double() for p in self.accelerator.unwrap_model(model).parameters()]
        local = torch.stack([sum(p.sum() for p in params), sum((p * p).sum() for p in params)])
        return self.accelerator.gather(local.to(self.accelerator.device)[None]).cpu().tolist()

    def _finish(self, history: list[dict], progress: TrainingProgress, model, images_per_second: float | None) -> dict:
        fingerprints = self._replica_fingerprints(model)
        if any(f != fingerprints[0] for f in fingerprints):
            logger.error("distributed replicas disagree: %s", fingerprints)
        summary = {
            "replica_fingerprints": fingerprints,
            "best_step": progress.best_step, "best_mean_map": progress.best_map if progress.best_map >= 0 else None,
            "total_steps": progress.step, "training_species": self.species,
            "training_identities": len(self.identities.names), "training_images": len(self.train_data),
            "num_processes": self.accelerator.num_processes, "images_per_second": images_per_second,
            "history": history,
        }
        self._write_json(TRAINING_SUMMARY, summary)
        if self.accelerator.is_main_process:
            card = training_card(self.config, summary, self.identities,
                                 VALIDATION_RESULTS if (self.output_dir / VALIDATION_RESULTS).is_file() else None)
            (self.output_dir / "README.md").write_text(card)
            if (self.output_dir / VALIDATION_RESULTS).is_file():
                write_model_card(self.output_dir / "README.md", command="train.py")
            if self.config.push_to_hub:
                url = push_output_to_hub(self.output_dir, self.config.hub_model_id, private=self.config.hub_private)
                self.print(f"pushed to {url}")
        self.accelerator.wait_for_everyone()
        return summary


class _StopSignal:
    """Remembers SIGTERM/SIGINT so the loop can checkpoint before exiting (preemption, Ctrl-C)."""

    def __init__(self):
        self.received = 0
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.received = signum


def _contiguous_weights(models, weights: list[dict], output_dir: str) -> None:
    """save_state pre-hook: safetensors needs contiguous tensors, channels_last weights are not."""
    for state in weights:
        for key, value in state.items():
            state[key] = value.contiguous()


def _set_train_modes(model: WildReIDForMetricLearning, frozen_backbone: bool, backbone_norm: str, neck_norm: str) -> None:
    """Training mode, except: a frozen backbone (weights and BatchNorm statistics); with
    backbone_norm="frozen", the backbone's BatchNorm statistics (their scale and shift still learn); with
    neck_norm="running", the neck's normalisation. Validation's embedding pass resets modes, so this runs
    every step (it costs microseconds).

    Why frozen statistics: in train mode BatchNorm normalises by the statistics of the batch; on P x K
    batches of 16 those are noisy and identity-dependent, the network learns to rely on them, and its
    evaluation-mode embeddings (running statistics) then fail: measured on 12 synthetic individuals, 60
    steps raised leave-one-out top-1 on the training images from 0.19 to 0.53 with frozen statistics and
    lowered it to 0.06 with batch statistics.
    """
    model = getattr(model, "_orig_mod", model)
    model.train()
    backbone = model.wildreid.backbone
    backbone.requires_grad_(not frozen_backbone)
    backbone.train(not frozen_backbone)
    if backbone_norm == "frozen":
        for module in backbone.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    if neck_norm == "running":
        model.wildreid.neck.norm.eval()


def track_neck_statistics(norm: torch.nn.BatchNorm1d) -> torch.utils.hooks.RemovableHandle:
    """Keep the neck's running statistics following the backbone while it trains (neck_norm="running").

    The neck normalises with its running statistics (evaluation mode), so nothing updates them; but a
    fine-tuning backbone moves its features (measured: the pooled mean's norm from 80 to 61, their variance
    down 10x in 60 steps), and statistics left at their calibration value stop centring them: every
    embedding then points the same way (mean pairwise cosine 0.999) and retrieval falls to chance. This
    forward pre-hook moves them towards each training batch's statistics with BatchNorm's momentum,
    averaged over processes so replicas agree; batches only update them, never normalise themselves.
    """
    def update(module: torch.nn.BatchNorm1d, args: tuple) -> None:
        if not torch.is_grad_enabled():  # embedding passes (validation, prototypes) leave them alone
            return
        features = args[0].detach().float()
        moments = torch.stack([features.mean(0), (features * features).mean(0)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(moments)
            moments /= torch.distributed.get_world_size()
        count = features.shape[0] * (torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1)
        variance = (moments[1] - moments[0] ** 2).clamp(min=0) * count / max(count - 1, 1)
        with torch.no_grad():
            module.running_mean.lerp_(moments[0].to(module.running_mean.dtype), module.momentum)
            module.running_var.lerp_(variance.to(module.running_var.dtype), module.momentum)

    return norm.register_forward_pre_hook(update)


@torch.no_grad()
def pooled_features(embedder: WildReIDModel, dataset: Dataset, processor: WildReIDImageProcessor, rows: np.ndarray, *,
                    batch_size: int, num_workers: int, accelerator=None) -> tuple[torch.Tensor, np.ndarray]:
    """GeM-pooled backbone features (the neck's input; float32, CPU) of the dataset `rows` and the rows they
    belong to; unreadable images are skipped (the loader reports them). With several processes each pools
    its share and every process receives all of them."""
    from tqdm.auto import tqdm

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ReIDImageDataset(dataset, processor), rows[rank::world].tolist()),
        batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
    )
    device = next(embedder.parameters()).device
    was_training = embedder.training
    embedder.eval()
    features, indices = [torch.zeros(0, embedder.backbone.num_features)], [torch.zeros(0, dtype=torch.long)]
    for batch in tqdm(loader, desc="pooling training images", disable=rank != 0, leave=False):
        if "pixel_values" not in batch:
            continue
        pixels = processor.normalize(batch["pixel_values"].to(device))
        features.append(embedder.pooling(embedder.forward_features(pixels)).float().cpu())
        indices.append(batch["index"])
    embedder.train(was_training)
    local = (torch.cat(features), torch.cat(indices).numpy())
    if world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([local])
    else:
        parts = [local]
    return torch.cat([part[0] for part in parts]), np.concatenate([part[1] for part in parts])


@torch.no_grad()
def calibrate_neck_statistics(norm: torch.nn.BatchNorm1d, pooled: torch.Tensor) -> None:
    """Set the BN neck's running mean and variance to those of `pooled` training features.

    A fresh neck holds mean 0 / variance 1, so its evaluation-mode output (the raw GeM vector, dominated
    by one common component) has little to do with its training-mode output (batch-centred): prototypes
    and validation would live in another space than the loss. Calibrated, the two agree from step 0.
    """
    if len(pooled) < 2:
        raise ValueError("fewer than 2 readable training images: cannot set the neck statistics")
    pooled = pooled.double()
    norm.running_mean.copy_(pooled.mean(0).to(norm.running_mean))
    norm.running_var.copy_(pooled.var(0).to(norm.running_var))


def _all_finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def _latest_checkpoint_or_none(output_dir: Path) -> Path | None:
    try:
        return find_checkpoint(output_dir, "latest")
    except FileNotFoundError:
        return None


def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def _flat_for_tracker(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat_for_tracker(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[prefix + key] = value
        else:
            flat[prefix + key] = str(value)
    return flat


def push_output_to_hub(output_dir: Path, repo_id: str, private: bool = False) -> str:
    """Upload the output folder (embedder, processor, config, metrics, card) without the checkpoints."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(output_dir),
                               ignore_patterns=["checkpoints/*", "logs/*", "*/events.out.*"],
                               commit_message="Upload wildreid model")
    return commit.commit_url if hasattr(commit, "commit_url") else str(commit)


def load_config_file(path: str | os.PathLike) -> dict:
    with open(path) as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of training options at the top level")
    return values


def train(config: TrainingConfig) -> dict:
    return Trainer(config).run()


def _parse_bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _optional(kind):
    def parse(text: str):
        return None if str(text).lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def build_argument_parser():
    """`train.py` flags: `--config FILE` plus one flag per :class:`TrainingConfig` field, named as the field."""
    import argparse
    import typing

    parser = argparse.ArgumentParser(
        prog="train.py", description="Train a wildreid model (run with `accelerate launch train.py ...`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of training options; flags override it")
    hints = typing.get_type_hints(TrainingConfig)
    for item in fields(TrainingConfig):
        hint, flag = hints[item.name], f"--{item.name}"
        origin_args = typing.get_args(hint)
        if item.name == "augmentation":
            parser.add_argument(flag, nargs="+", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                                help=f"augmentation overrides, keys: {', '.join(f.name for f in fields(AugmentationConfig))}")
        elif hint == list[str]:  # `--val_datasets` with no value clears the list
            parser.add_argument(flag, nargs="*", default=argparse.SUPPRESS)
        elif hint is bool:
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=argparse.SUPPRESS)
        else:
            kind = next((a for a in origin_args if a is not type(None)), hint) if origin_args else hint
            parser.add_argument(flag, type=_optional(kind) if type(None) in origin_args else kind, default=argparse.SUPPRESS)
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainingConfig:
    """Defaults, then the `--config` YAML, then command-line flags."""
    args = vars(build_argument_parser().parse_args(argv))
    values = load_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    augmentation = args.pop("augmentation", None)
    values.update(args)
    if augmentation:
        overrides = values.get("augmentation") or {}
        for pair in augmentation:
            key, _, text = pair.partition("=")
            overrides[key] = _parse_bool(text) if text.lower() in ("true", "false") else float(text)
        values["augmentation"] = overrides
    return TrainingConfig.from_dict(values)
