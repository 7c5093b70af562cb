"""Multi-species metric-learning training with Accelerate: one script for a laptop CPU, one GPU or many
GPUs/nodes; resumable to the exact same weights; few-shot adaptation of a trained embedder.

`train.py` parses arguments into a :class:`TrainingConfig` and calls :func:`train`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from hub_datasets.specs import load_specs
from modeling_wildreid import WildReIDConfig, WildReIDForMetricLearning, WildReIDImageProcessor

from ..cards import training_card, write_model_card
from ..embedding import ReIDImageDataset, collate, embed_dataset, load_wildreid_model
from ..embedding.data import ignore_stop_signals
from ..embedding.shipped_model import publish_model_folder
from ..embedding.training_record import TRAINING_CONFIG_FILE
from ..evaluation.protocols import leave_one_out_by_species
from ..provenance import code_version
from ..threads import configure_threads, worker_count
from .augment import build_augmentation
from .checkpoints import (StopSignal, TimeLimit, TrainingProgress, contiguous_weights, find_checkpoint,
                          latest_checkpoint_or_none, prune_checkpoints, refuse_pickled_objects, start_run)
from .config import TrainingConfig
from .initialisation import calibrate_neck_statistics, init_head_from_prototypes, pooled_features
from .normalisation import early_stage_parameters, set_train_modes, track_neck_statistics
from .optimization import parameter_groups
from .sampling import SpeciesBalancedBatchSampler, filter_min_images
from .tracking import flat_for_tracker, resolve_tracker
from .weight_interpolation import choose_interpolation, load_start_weights, save_start_weights

logger = logging.getLogger(__name__)

VALIDATION_RESULTS = "validation_results.json"  # best validation, in evaluate.py's results shape
TRAINING_SUMMARY = "training_summary.json"  # every validation, best step, data sizes


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or weights; the run stopped without saving them."""


class Trainer:
    """One training run; construct, then call :meth:`run`. Everything that can fail on the data or the
    configuration fails in the constructor, before the first expensive step."""

    def __init__(self, config: TrainingConfig):
        config.validate()
        self.config = config
        self.output_dir = Path(config.output_dir)
        cuda = torch.cuda.is_available()
        mixed = config.mixed_precision if config.mixed_precision != "auto" else ("bf16" if cuda else "no")
        self.channels_last = config.channels_last == "auto" or str(config.channels_last).lower() == "true"
        self.accelerator = Accelerator(
            mixed_precision=mixed,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=resolve_tracker(config.log_with),
            project_dir=str(self.output_dir),
            step_scheduler_with_optimizer=False,
            # Frozen steps or stages leave backbone weights without gradients: DDP must allow that.
            kwargs_handlers=[DistributedDataParallelKwargs(
                find_unused_parameters=config.freeze_backbone_steps > 0 or config.frozen_backbone_stages > 0)],
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
            embedder = load_wildreid_model(config.init_from)
            model_config = copy.deepcopy(embedder.config)
            model_config.update({
                "num_identities": len(self.identities.names), "num_subcenters": config.num_subcenters,
                "arcface_scale": config.arcface_scale, "margin_min": config.margin_min, "margin_max": config.margin_max,
            })
            if config.image_size != model_config.image_size:
                self.print(f"init_from model uses {model_config.image_size}px inputs; image_size={config.image_size} ignored")
            model = WildReIDForMetricLearning(model_config)
            model.wildreid.load_state_dict(embedder.state_dict())
        else:
            model_config = WildReIDConfig(
                backbone=config.backbone, image_size=config.image_size, embedding_dim=config.embedding_dim,
                num_identities=len(self.identities.names), num_subcenters=config.num_subcenters,
                arcface_scale=config.arcface_scale, margin_min=config.margin_min, margin_max=config.margin_max,
            )
            model = (WildReIDForMetricLearning.with_imagenet_backbone(model_config) if config.backbone_pretrained
                     else WildReIDForMetricLearning(model_config))
        self.head_from_prototypes = config.head_init == "prototypes" or (
            config.head_init == "auto" and config.init_from is not None)
        model.config.training_species = self.species
        model.config.name_identities(self.identities.names)
        model.config.training_datasets = list(config.datasets)
        model.set_margins_from_counts(self.identities.counts)
        self.frozen_parameters = early_stage_parameters(model.wildreid.backbone, config.frozen_backbone_stages)
        self.model = model
        self.processor = WildReIDImageProcessor.from_config(model.config)

    # ---- loop --------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Data loader, prepared model / optimiser / scheduler, and the resumed position."""
        config, accelerator = self.config, self.accelerator
        # (found before start_run marks the folder as this run's)
        resume_from = config.resume_from_checkpoint and find_checkpoint(self.output_dir, config.resume_from_checkpoint)
        accelerator.wait_for_everyone()
        run_id = start_run(self.output_dir, resume=bool(resume_from)) if accelerator.is_main_process else ""
        self.sampler = SpeciesBalancedBatchSampler(
            self.train_data["identity"], self.train_data["species"],
            config.identities_per_batch, config.images_per_identity, seed=config.seed,
        )
        dataset = ReIDImageDataset(self.train_data, self.processor, self.train_labels,
                                   augment=build_augmentation(config.augmentation))
        workers = worker_count(config.num_workers)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=workers, collate_fn=collate,
            worker_init_fn=ignore_stop_signals,
            pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
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
                init_head_from_prototypes(self.model, pooled, np.asarray(self.train_labels)[indices], config.seed)
            if config.weight_interpolation and accelerator.is_main_process:
                save_start_weights(self.model.wildreid, self.output_dir)
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
        # Linear warm-up, then cosine decay to min_lr_ratio of each group's learning rate.
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(self.optimizer, warmup, self.total_steps,
                                                                min_lr_rate=config.min_lr_ratio)
        self.scheduler = accelerator.prepare(scheduler)
        self.progress = TrainingProgress()  # saved as JSON by _save_checkpoint, never pickled (see checkpoints.py)
        accelerator.register_save_state_pre_hook(contiguous_weights)
        if resume_from:
            refuse_pickled_objects(resume_from)
            self.progress = TrainingProgress.load(resume_from)
            accelerator.load_state(str(resume_from))
            self.print(f"resumed from {resume_from} at step {self.progress.step}")
        self.progress.run_id = run_id  # the checkpoints this run writes, prunes and resumes

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
        time_limit = TimeLimit(self.config.max_train_minutes, self.accelerator)  # the setup's pooling pass counts
        self.setup()
        config, accelerator, progress = self.config, self.accelerator, self.progress
        model, loader, total_steps = self.prepared_model, self.loader, self.total_steps
        self._write_resolved_config(total_steps)
        if accelerator.is_main_process:
            accelerator.init_trackers("wildreid", config=flat_for_tracker(asdict(config)))
        self.print(f"training {len(self.identities.names)} identities / {len(self.train_data)} images over species "
                   f"{', '.join(self.species)}; {total_steps} steps of {self.sampler.p}x{self.sampler.k} images "
                   f"x {accelerator.num_processes} processes x {config.gradient_accumulation_steps} accumulation")
        history = []
        if config.init_from and progress.step == 0 and self.val_data is not None:
            before = self.validate(model, step=0, label="before adaptation")
            history.append({"step": 0, "phase": "before adaptation", **before})
        stop_signal = StopSignal()
        speeds: list[float] = []  # images/s of each logging window, validation and checkpoints excluded
        window_start, window_images = time.perf_counter(), 0
        bar = tqdm(total=total_steps, initial=progress.step, disable=not accelerator.is_local_main_process,
                   desc="training", dynamic_ncols=True)
        done = progress.step >= total_steps
        while not done:
            consumed = progress.step * config.gradient_accumulation_steps
            epoch, offset = divmod(consumed, len(loader))
            self.sampler.use_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, offset) if offset else loader
            for batch in epoch_loader:
                frozen = progress.step < config.freeze_backbone_steps
                set_train_modes(accelerator.unwrap_model(model), frozen, self.backbone_norm, config.neck_norm,
                                self.frozen_parameters)
                for failure in batch["failures"]:
                    logger.warning("training skips %s: %s", failure.file, failure.reason)
                loss = self.train_step(batch)
                window_images += len(batch["labels"]) * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                progress.step += 1
                bar.update(1)
                done = progress.step >= total_steps or time_limit.reached()  # either way: validated and saved
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
                                                              "protocol": self.config.validation_protocol,
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
        elif config.weight_interpolation:
            history += self._interpolate_with_start(model, progress)
        # The first window includes loader start-up; report the steady state when there is one.
        steady = speeds[1:] or speeds
        summary = self._finish(history, progress, model, float(np.median(steady)) if steady else None)
        accelerator.end_training()
        return summary

    # ---- pieces ------------------------------------------------------------------------------------------

    def validate(self, model, step: int, label: str = "validation") -> dict:
        embedder = self.accelerator.unwrap_model(model)
        embedder = getattr(embedder, "_orig_mod", embedder).wildreid
        embedded = embed_dataset(embedder, self.val_data, self.processor, batch_size=self.config.eval_batch_size,
                                 num_workers=self.config.num_workers, accelerator=self.accelerator, desc=label)
        results = leave_one_out_by_species(self.val_data, embedded, training_species=self.species,
                                           exclude_same_encounter=self.config.val_across_sightings)
        self.print(f"step {step} {label}: " + ", ".join(
            f"{name} top1 {m['top1']:.3f} mAP {m['map']:.3f}" for name, m in results["species"].items()
        ) + f" | mean top1 {results['mean']['top1']:.3f} mAP {results['mean']['map']:.3f}")
        self.accelerator.log({f"val/{name}/{key}": m[key] for name, m in results["species"].items()
                              for key in ("top1", "map")} | {"val/mean_map": results["mean"]["map"]}, step=step)
        return results

    def _interpolate_with_start(self, model, progress: TrainingProgress) -> list[dict]:
        """WiSE-FT: the best validated weights mixed with the start; a mix with better validation mAP is saved."""
        self.accelerator.wait_for_everyone()
        embedder = self.accelerator.unwrap_model(model)
        embedder = getattr(embedder, "_orig_mod", embedder).wildreid
        best = load_wildreid_model(str(self.output_dir)).state_dict()
        embedder.load_state_dict(best)
        alpha, metrics, tried = choose_interpolation(
            embedder, load_start_weights(self.output_dir), self.config.weight_interpolation,
            lambda a: self.validate(model, progress.step, label=f"weights {a:g} x fine-tuned + {1 - a:g} x start"),
            progress.best_map)
        embedder.config.weight_interpolation = alpha  # in config.json: which mix the saved weights are
        if alpha is not None:
            progress.best_map = metrics["mean"]["map"]
            self._save_embedder(model, self.output_dir)
            self._write_json(VALIDATION_RESULTS, {**metrics, "model": str(self.output_dir), "step": progress.best_step,
                                                  "protocol": self.config.validation_protocol,
                                                  "weight_interpolation": alpha})
        # The mixes are of the best step's weights, whatever step training ended at.
        return [{"step": progress.best_step, "phase": "weight interpolation", **entry} for entry in tried]

    def _non_finite_message(self, progress: TrainingProgress, what: str) -> str:
        last = latest_checkpoint_or_none(self.output_dir)
        return (f"{what} at step {progress.step + 1}; stopped without saving. Last good checkpoint: "
                f"{last or 'none yet'}. Lower the learning rate or check the data.")

    def _save_checkpoint(self, model, progress: TrainingProgress) -> None:
        accelerator = self.accelerator
        if not all(torch.isfinite(p).all() for p in accelerator.unwrap_model(model).parameters()):
            raise NonFiniteLossError(self._non_finite_message(progress, "weights became non-finite"))
        directory = self.output_dir / "checkpoints" / f"checkpoint-{progress.step}"
        accelerator.wait_for_everyone()
        accelerator.save_state(str(directory))
        if accelerator.is_main_process:
            # Written last: a checkpoint without it was interrupted mid-save and is never resumed from.
            progress.save(directory)
            prune_checkpoints(self.output_dir, progress.run_id, keep=self.config.save_total_limit)
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
            (self.output_dir / TRAINING_CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))

    def _write_json(self, name: str, values: dict) -> None:
        if self.accelerator.is_main_process:
            (self.output_dir / name).write_text(json.dumps({**values, **code_version()}, indent=2))

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
            "weight_interpolation": getattr(self.model.wildreid.config, "weight_interpolation", None),
            "total_steps": progress.step, "planned_steps": self.total_steps, "training_species": self.species,
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
                url = publish_model_folder(self.output_dir, self.config.hub_model_id, private=self.config.hub_private)
                self.print(f"pushed to {url}")
        self.accelerator.wait_for_everyone()
        return summary


def train(config: TrainingConfig) -> dict:
    configure_threads(config.num_threads)
    return Trainer(config).run()
