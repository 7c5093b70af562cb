"""Shared recipe and bookkeeping of the experiments: one training recipe, the fixed evaluation sets, cached
training / evaluation / local-matching steps under `experiments/runs/` (git-ignored) and results JSON under
`experiments/results/` (committed; numbers only) that `python -m wildreid.cards model_card.md` renders.

Every step is skipped when its output already exists (pass `force=True` to redo it), so experiments can
share models: the leave-one-species-out models of `zero_shot.py` are the starting points of `few_shot.py`,
and the ImageNet-init arm of `few_shot.py` is the end-to-end curve of `size_study.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs, spinning threads of a
# 2-thread torch process wait for a descheduled sibling, and a 1.3 s training step took 30-45 s here
# (measured with another process on one of the 2 cores; with this setting: 2.3-2.6 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

EXPERIMENTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = EXPERIMENTS_DIR.parent
if str(REPO_ROOT) not in sys.path:  # scripts run as `python experiments/x.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from hub_datasets.reported_sets import selection_set  # noqa: E402
from hub_datasets.specs import parse_spec  # noqa: E402
from wildreid.evaluation.runner import EvaluationRequest, run_evaluation  # noqa: E402
from wildreid.provenance import code_version  # noqa: E402
from wildreid.training import TrainingConfig, train  # noqa: E402
from wildreid.training.checkpoints import run_checkpoints  # noqa: E402

RUNS_DIR = EXPERIMENTS_DIR / "runs"
RESULTS_DIR = EXPERIMENTS_DIR / "results"
IMAGENET = "imagenet:tf_efficientnet_lite0"

# The same evaluation set for every method (leave-one-out inside each): held-out identities only.
EVAL_SETS = {
    "lion": "lion:val",
    "nyala": "nyala:test",
    "dog": "dog[max_identities=100]:test",
    "pig": "pig:test",
}
TRAIN_SETS = {"lion": "lion:train", "nyala": "nyala:train", "dog": "dog:train", "pig": "pig:train"}
# The experiments train on 200 of dog's 1,038 training identities: at these step budgets most of the others
# would be seen about once, and every run that starts its head from prototypes embeds its whole training set.
TRAINING_POOL = {"dog": {"max_identities": 200}}
SPECIES = tuple(EVAL_SETS)
# Dry runs (`--dry-run`): a few identities per set and a few steps, to exercise a whole script in minutes.
DRY_IDENTITIES = 6
DRY_STEPS = 3


def base_config(**overrides: Any) -> TrainingConfig:
    """The experiments' training recipe: EfficientNet-Lite0 with ImageNet weights at 224 px, P8 x K2
    batches, sub-center ArcFace with dynamic margins; `overrides` set any `TrainingConfig` field.

    Chosen with the short runs of `recipe.py`: the head trains alone for `freeze_backbone_steps`, then the
    backbone fine-tunes at a low rate with its BatchNorm statistics kept at ImageNet's (small multi-species
    batches shifted them and cost dog most of its ImageNet accuracy). `train_model` also starts the identity
    head at the identities' mean ImageNet embeddings.
    """
    values: dict[str, Any] = dict(
        backbone="tf_efficientnet_lite0", backbone_pretrained=True, image_size=224,
        identities_per_batch=8, images_per_identity=2, min_images_per_identity=3,
        learning_rate=1e-3, backbone_learning_rate=1e-4, warmup_steps=30, freeze_backbone_steps=50,
        weight_decay=1e-4, min_lr_ratio=0.01, num_workers=2, eval_batch_size=64,
        seed=0, log_with="none", save_total_limit=1,
    )
    values.update(overrides)
    return TrainingConfig.from_dict(values)


# ----------------------------------------------------------------------------- specs


def with_params(spec: str, **params: Any) -> str:
    """`spec` with sampling / re-split parameters added or replaced, e.g. a dry-run subsample."""
    parsed = parse_spec(spec)
    merged = dict(parsed.params)
    merged.update({key: value for key, value in params.items() if value is not None})
    return str(replace(parsed, params=tuple(sorted(merged.items()))))


def eval_set(species: str, dry_run: bool = False) -> str:
    spec = EVAL_SETS[species]
    return with_params(spec, max_identities=DRY_IDENTITIES) if dry_run else spec


def selection_sets(species: str, dry_run: bool = False) -> tuple[str, str]:
    """(train, validate) specs of a selection run: four fifths of `species`' training individuals (limited to
    its `TRAINING_POOL`) and the other fifth, so a recipe is chosen without the reported sets (`EVAL_SETS`)."""
    pool = {**TRAINING_POOL.get(species, {}), **({"max_identities": DRY_IDENTITIES} if dry_run else {})}
    return selection_set(species, "train", **pool), selection_set(species, "test", **pool)


def fit_set(species: str, dry_run: bool = False) -> str:
    """Where fusion and auto are fitted for `species`: its training split (at most 100 individuals, as
    bench/identification_accuracy.py does: the fit grows with the square of its images)."""
    spec = TRAIN_SETS[species] if species in ("lion", "pig") else with_params(TRAIN_SETS[species], max_identities=100)
    return with_params(spec, max_identities=DRY_IDENTITIES) if dry_run else spec


def train_set(species: str, dry_run: bool = False, **params: Any) -> str:
    """The training spec of `species` (limited to its `TRAINING_POOL`), with extra sampling `params`."""
    params = {**TRAINING_POOL.get(species, {}), **params}
    spec = with_params(TRAIN_SETS[species], **params) if params else TRAIN_SETS[species]
    return with_params(spec, max_identities=DRY_IDENTITIES) if dry_run else spec


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


# ----------------------------------------------------------------------------- environment


def hardware() -> dict:
    """What ran the experiment: CPU model, cores, torch threads, GPU, and the load from other users."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: the platform module's name below
        cpuinfo = []
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = names[0] if names else (platform.processor() or "unknown")
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if hasattr(os, "getloadavg"):
        info["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)
    return info


def hardware_label(info: dict) -> str:
    if info.get("gpu"):
        return f"{info['gpu']}"
    return f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads"


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(REPO_ROOT)
    except ValueError:
        shown = script
    return "python " + " ".join(shlex.quote(a) for a in [str(shown), *sys.argv[1:]])


def runs_dir(dry_run: bool) -> Path:
    return RUNS_DIR / "dry" if dry_run else RUNS_DIR


def results_path(name: str, dry_run: bool) -> Path:
    return (RUNS_DIR / "dry" / "results" if dry_run else RESULTS_DIR) / f"{name}.json"


# ----------------------------------------------------------------------------- training


def train_model(name: str, *, dry_run: bool = False, force: bool = False, keep_checkpoints: bool = False,
                **overrides: Any) -> dict:
    """Train `base_config(**overrides)` into `runs/<name>/` unless it is already there; returns the run's record
    (path, steps, wall time of the training itself, data sizes, whether it was reused).

    `keep_checkpoints`: keep the run's four evenly spaced checkpoints (their steps in the record's
    "checkpoints"), so that another step than the saved best can be weighed later (transfer_mix.py); a finished
    run without them is trained again.

    Without an `init_from` override, training starts from the saved ImageNet embedder (`imagenet_start`), so
    the identity head starts at each identity's mean ImageNet embedding; `init_from=None` starts the head at
    random instead."""
    if "init_from" not in overrides:
        overrides["init_from"] = imagenet_start(dry_run)
    directory = runs_dir(dry_run) / name
    record_path = directory / "experiment_run.json"
    if record_path.is_file() and not force:
        record = json.loads(record_path.read_text())
        if not keep_checkpoints or record.get("checkpoints"):
            return {**record, "reused": True}
        print(f"[train] {name}: trained without keeping its checkpoints; training it again to keep them", flush=True)
        force = True
    if force and directory.exists():
        shutil.rmtree(directory)
    if dry_run:
        overrides["max_steps"] = min(int(overrides.get("max_steps") or DRY_STEPS), DRY_STEPS)
        overrides["freeze_backbone_steps"] = min(int(overrides.get("freeze_backbone_steps", 1)), 1)
    config = base_config(output_dir=str(directory), **{"val_datasets": [], **overrides})
    if config.max_steps is None:
        raise ValueError(f"run {name}: set max_steps (the experiments budget steps, not epochs)")
    config.save_steps = max(config.max_steps // 4, 50)  # resumable if interrupted, without much I/O
    if keep_checkpoints:
        config.save_total_limit = -(-config.max_steps // config.save_steps)
    resume = (directory / "checkpoints").is_dir() and any((directory / "checkpoints").glob("checkpoint-*/wildreid_progress.json"))
    if resume:
        config.resume_from_checkpoint = "latest"
    else:  # the experiment's own folder: a run interrupted before its first checkpoint starts again there
        config.overwrite_output_dir = True
    print(f"[train] {name}: {config.max_steps} steps of {config.identities_per_batch}x{config.images_per_identity} "
          f"on {config.datasets}" + (f" from {config.init_from}" if config.init_from else "") +
          (" (resuming)" if resume else ""), flush=True)
    started = time.perf_counter()
    summary = train(config)
    wall = time.perf_counter() - started
    record = {
        "run": name, "path": str(directory.relative_to(EXPERIMENTS_DIR)), "datasets": config.datasets,
        "init_from": shown_path(config.init_from), "steps": summary["total_steps"], "train_wall_s": round(wall, 1),
        "resumed": resume, "training_images": summary["training_images"],
        "training_identities": summary["training_identities"], "images_per_second": summary["images_per_second"],
        "config": {key: getattr(config, key) for key in (
            "learning_rate", "backbone_learning_rate", "warmup_steps", "freeze_backbone_steps",
            "identities_per_batch", "images_per_identity", "min_images_per_identity", "image_size", "seed",
            "backbone_norm", "neck_norm", "frozen_backbone_stages", "head_init")},
        **code_version(),
    }
    if keep_checkpoints:
        record["checkpoints"] = [step for step, _ in run_checkpoints(directory)]
    else:
        shutil.rmtree(directory / "checkpoints", ignore_errors=True)  # finished: the embedder is all we need
    record_path.write_text(json.dumps(record, indent=2))
    print(f"[train] {name}: done in {wall / 60:.1f} min", flush=True)
    return {**record, "reused": False}


def shown_path(path: str | None) -> str | None:
    """`path` relative to the experiments folder when inside it: results JSON name runs, not this machine."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(EXPERIMENTS_DIR))
    except ValueError:
        return path


def run_path(record: dict) -> str:
    """The trained embedder folder of a `train_model` record, as a model spec for evaluation."""
    return str(EXPERIMENTS_DIR / record["path"])


# What configs/cpu_real.yaml sets beyond base_config: the flagship recipe that `--recipe flagship` runs.
FLAGSHIP_CONFIG = REPO_ROOT / "configs" / "cpu_real.yaml"
FLAGSHIP_KEYS = ("head_init", "freeze_backbone_steps", "frozen_backbone_stages", "warmup_steps", "learning_rate",
                 "backbone_learning_rate", "min_images_per_identity", "image_size", "weight_interpolation")
RECIPES = ("flagship", "common")
# Steps of a leave-one-species-out model of the flagship recipe (zero_shot.py, few_shot.py, transfer_mix.py): four
# of them, at about 15 minutes each on 2 cores, fit one session beside the rest of its work. A quarter of the
# flagship's 2,400; the flagship's held-out-individual mAP at step 600 was 37.3 % against 41.0 % at 2,400.
LOSO_STEPS = 600


def flagship_overrides() -> dict[str, Any]:
    """The flagship's recipe settings, read from its config so the two never drift apart."""
    import yaml

    values = yaml.safe_load(FLAGSHIP_CONFIG.read_text())
    return {key: values[key] for key in FLAGSHIP_KEYS if key in values}


def recipe_settings(recipe: str) -> dict[str, Any]:
    """`train_model` overrides of a fixed-budget run at `recipe`: the flagship's settings (frozen stages, prototype
    head, learning rates, warm-up) without its WiSE-FT mixes, which need a validation set such runs do not have;
    nothing for "common" (`base_config` as it is)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if recipe == "common":
        return {}
    return {key: value for key, value in flagship_overrides().items() if key != "weight_interpolation"}


def leave_one_species_out(held_out: str, steps: int, *, seed: int = 0, dry_run: bool = False,
                          force: bool = False, recipe: str = "common", keep_checkpoints: bool = False) -> dict:
    """The model trained on every species but `held_out` (zero_shot.py), the start of few_shot.py.

    `recipe="flagship"`: configs/cpu_real.yaml's recipe with its validation rule: trained on four fifths of the
    other species' training individuals, its best step and WiSE-FT mix chosen on the other fifth (never on
    `held_out`, never on a reported set); `"common"`: `base_config` on the whole training splits, no validation."""
    others = [s for s in SPECIES if s != held_out]
    if recipe == "common":
        return train_model(f"loso_{held_out}_s{steps}_seed{seed}", dry_run=dry_run, force=force, seed=seed,
                           max_steps=steps, datasets=[train_set(s, dry_run) for s in others])
    train_specs, validation_specs = zip(*(selection_sets(s, dry_run) for s in others))
    overrides = flagship_overrides()
    steps_between = max(steps // 3, 1)  # three validations: the best step is chosen among them
    return train_model(f"loso_{held_out}_flagship_s{steps}_seed{seed}", dry_run=dry_run, force=force, seed=seed,
                       max_steps=steps, datasets=list(train_specs), val_datasets=list(validation_specs),
                       eval_steps=steps_between, keep_checkpoints=keep_checkpoints, **overrides)


SHOTS = ("1", "2", "4", "all")


def imagenet_start(dry_run: bool = False) -> str:
    """The untrained ImageNet embedder saved as a model folder, so that training from ImageNet can take the
    same `init_from` path (prototype head, frozen-backbone warm-up) as adapting a trained model."""
    from modeling_wildreid import WildReIDConfig, WildReIDModel

    directory = runs_dir(dry_run) / slug(IMAGENET) / "model"
    if not (directory / "config.json").is_file():
        config = WildReIDConfig(backbone=IMAGENET.split(":", 1)[1], image_size=224)
        WildReIDModel.with_imagenet_backbone(config).save_pretrained(directory)
    return str(directory)


def adapt(species: str, shots: str, start: str, *, steps: int, freeze_steps: int, loso_steps: int, seed: int = 0,
          dry_run: bool = False, force: bool = False, recipe: str = "common", loso_weights: Path | None = None) -> dict:
    """Train on `shots` images per identity ("all": every image) of `species`' training pool, starting from the
    ImageNet embedder (`start="imagenet"`) or from the model that never saw `species` (`start="loso"`).
    Identities with a single image are kept (min_images_per_identity=1) so every size has the same identities.
    `recipe="flagship"` adapts with the flagship's settings (frozen stages, prototype head, learning rates) from
    either start; there is nothing to validate on here, so no WiSE-FT mix. `loso_weights`: a model folder inside
    the leave-one-species-out run (a transfer_mix.py point) to start from instead of the run's saved weights."""
    if start == "imagenet":
        init, tag = imagenet_start(dry_run), "imagenet"
    elif start == "loso":
        run = Path(run_path(leave_one_species_out(species, loso_steps, seed=seed, dry_run=dry_run, recipe=recipe)))
        if loso_weights is not None and run not in loso_weights.parents:
            raise ValueError(f"{loso_weights} is not a point of the leave-one-species-out run {run}")
        init = str(loso_weights or run)
        tag = (f"loso{loso_steps}" + ("_flagship" if recipe == "flagship" else "")
               + (f"_{loso_weights.name}" if loso_weights is not None else ""))
    else:
        raise ValueError(f"start must be imagenet or loso, got {start!r}")
    sampling = {} if shots == "all" else {"max_images_per_identity": int(shots)}
    settings = {key: value for key, value in recipe_settings(recipe).items()
                if key not in ("freeze_backbone_steps", "min_images_per_identity")}
    name = f"adapt_{species}_{tag}_n{shots}_s{steps}_f{freeze_steps}_seed{seed}"
    if recipe == "flagship" and start == "imagenet":
        name += "_flagship"  # the loso tag already says it
    return train_model(name, dry_run=dry_run, force=force, seed=seed, **settings, max_steps=steps,
                       freeze_backbone_steps=freeze_steps, init_from=init, min_images_per_identity=1,
                       datasets=[train_set(species, dry_run, **sampling)])


# ----------------------------------------------------------------------------- evaluation


def _model_dir(model: str | None, dry_run: bool) -> Path:
    if model is None:
        return runs_dir(dry_run) / "sift"
    if model.startswith("imagenet:"):
        return runs_dir(dry_run) / slug(model)
    return Path(model)


def evaluate(model: str | None, datasets: Sequence[str], *, method: str = "global", gallery: Sequence[str] = (),
             val_datasets: Sequence[str] = (), shortlist: int = 100, dry_run: bool = False, force: bool = False,
             output: Path | None = None, label: str | None = None) -> dict:
    """evaluate.py's results (`run_evaluation`) for `model` (a run folder, `imagenet:...`, or None for SIFT)
    on `datasets`: leave-one-out, or closed-set against `gallery`; `method` global, local (SIFT) or fusion
    (calibrated on `val_datasets`). Cached next to the model (SIFT: runs/sift/); `output` also writes the
    JSON there. This is the one place the experiments call local-feature matching and fusion."""
    protocol = "closed-set" if gallery else "leave-one-out"
    key = slug("+".join(datasets) + (("__vs__" + "+".join(gallery)) if gallery else "")
               + (f"__{method}" if method != "global" else "") + (("__cal__" + "+".join(val_datasets)) if val_datasets else "")
               + (f"__top{shortlist}" if method == "fusion" else ""))
    if len(key) > 120:  # file-name limit: a readable head plus a digest of the whole key
        key = f"{key[:100]}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    cache = _model_dir(model, dry_run) / "eval" / f"{key}.json"
    if cache.is_file() and not force:
        results = json.loads(cache.read_text())
        results["reused"] = True
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        shown_model = label or model
        args = (["--model", shown_model] if model else []) + ["--method", method, "--protocol", protocol,
                                                              "--datasets", *datasets]
        if gallery:
            args += ["--gallery", *gallery]
        if val_datasets:
            args += ["--val_datasets", *val_datasets]
        if method == "fusion":
            args += ["--shortlist", str(shortlist)]
        request = EvaluationRequest(datasets=list(datasets), model=model, protocol=protocol, method=method,
                                    gallery=list(gallery), val_datasets=list(val_datasets), shortlist=shortlist,
                                    output=str(cache),
                                    command="python evaluate.py " + shlex.join(args))
        started = time.perf_counter()
        results = run_evaluation(request)
        results["eval_wall_s"] = round(time.perf_counter() - started, 1)
        if model:
            results["model"] = shown_model
        cache.write_text(json.dumps(results, indent=2))
        results["reused"] = False
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({k: v for k, v in results.items() if k != "reused"}, indent=2))
    return results


def evaluate_global(model: str, datasets: Sequence[str], **kwargs: Any) -> dict:
    return evaluate(model, datasets, method="global", **kwargs)


def evaluate_local(datasets: Sequence[str], **kwargs: Any) -> dict:
    """SIFT matching (OpenCV, RANSAC-verified inliers as the score), no model."""
    return evaluate(None, datasets, method="local", **kwargs)


# ----------------------------------------------------------------------------- results


def summary_metrics(m: dict) -> dict:
    """The metrics of one species' evaluation that results JSON keep."""
    return {key: m[key] for key in ("top1", "top5", "map", "n_queries", "n_identities")}


class ExperimentLog:
    """Wall time, command, hardware and the runs an experiment used; writes its results JSON."""

    def __init__(self, name: str, args: Any):
        self.name, self.args = name, args
        self.dry_run = bool(getattr(args, "dry_run", False))
        self.started = time.perf_counter()
        self.hardware = hardware()
        self.command = command_line()
        # The commit whose code runs, taken now: by the time results are written, the experiment's own plot
        # has changed a tracked file and later commits may have landed.
        self.code_version = code_version()
        self.runs: list[dict] = []
        self.evaluations: list[dict] = []

    def add_run(self, record: dict) -> dict:
        self.runs.append(record)
        return record

    def add_evaluation(self, what: str, results: dict) -> dict:
        self.evaluations.append({"what": what, "eval_wall_s": results.get("eval_wall_s"),
                                 "reused": results.get("reused", False)})
        return results

    def write(self, tables: dict[str, dict], results: dict, notes: Iterable[str] = ()) -> Path:
        """`tables`: {key: {"columns": [...], "rows": [[...]], "caption": "..."}}, rendered into the model
        card by `wildreid.cards` (numbers as given, `None` as a dash)."""
        wall = time.perf_counter() - self.started
        compute = sum(r.get("train_wall_s") or 0 for r in self.runs) + sum(e.get("eval_wall_s") or 0 for e in self.evaluations)
        if hasattr(os, "getloadavg"):
            self.hardware["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
        payload = {
            "kind": "experiment", "experiment": self.name, "command": self.command,
            "dry_run": self.dry_run, "wall_time_s": round(wall, 1),
            "compute_time_s": round(compute, 1), "hardware": self.hardware,
            "hardware_label": hardware_label(self.hardware),
            "settings": {k: v for k, v in vars(self.args).items() if k not in ("force",)},
            "notes": list(notes), "tables": tables, "results": results,
            "runs": self.runs, "evaluations": self.evaluations, **self.code_version,
        }
        path = results_path(self.name, self.dry_run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=_json_default))
        print(f"\nwrote {path} (wall time {wall / 60:.1f} min this invocation; {compute / 60:.1f} min of "
              f"training + evaluation in total, reused steps included)")
        return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def common_arguments(parser, *, steps: int, steps_help: str) -> None:
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--species", nargs="+", default=list(SPECIES), choices=SPECIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="redo steps whose outputs exist")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"{DRY_STEPS} steps, {DRY_IDENTITIES} identities per set, outputs under runs/dry/")

