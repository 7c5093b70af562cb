"""`wildreid adapt --gallery G`: fine-tune the gallery's model on the gallery's own labelled photos, in one command.

    wildreid adapt --gallery galleries/lion                    # at most 20 minutes, then installed or not
    wildreid adapt --gallery galleries/lion --budget_minutes 30 --max_steps 2000 --learning_rate 5e-4
    wildreid adapt --gallery galleries/lion --undo              # back to the revision adapt replaced

About a fifth of each species' individuals is held out (seeded, recorded; `adapt_data`) and measured leave-one-out
before and after; the rest trains through `wildreid.training.Trainer` with the few-shot recipe of
`train.py --init_from` (`adapt_plan`), as many steps as the time budget allows. The adapted model is installed only
when it is better on the held-out individuals (mean mAP over species, the figure training keeps its best step by);
otherwise the gallery stays as it was and both figures are printed. Installing (`adapt_install`) is one new gallery
revision under the gallery's writer lock; the replaced revision stays loadable under `<gallery>/revisions/`.

Everything before the install happens in a work folder beside the gallery (`<gallery>.adapt/`, one `adapt` at a
time): the held-out split, the plan, the training run and its checkpoints (about one a minute). Ctrl-C or kill -9
leaves the gallery untouched, and the same command run again resumes from the last checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import signal
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from filelock import FileLock, Timeout

from hub_datasets.specs import load_specs

from ..embedding import embed_dataset, load_embedder
from ..embedding.onnx_runtime import is_onnx_export
from ..evaluation.protocols import encounters_of
from . import store
from .adapt_data import (HOLDOUT, IMAGES_FILE, MIN_PHOTOS, GalleryImages, choose_holdout, describe, gallery_images,
                         holdout_figures, write_images)
from .adapt_install import install
from .revisions import undo
from .adapt_plan import (OVERRIDABLE, PLAN_FILE, RUN_DIR, load_plan, measure_step_seconds, recipe, save_plan, schedule,
                         seconds_after_training, steps_for_budget, training_config)
from .gallery import Gallery
from .workflows import load_gallery_embedder, model_tag

RESULT_FILE = "result.json"  # the outcome: before / after figures, installed or not
TRAINED_FILE = "trained.json"  # written when training finished: a rerun goes straight to measuring
# The whole command's default wall time: issue 31's limit for a species' adaptation on 2 cores. At 15 minutes lion's
# held-out mAP was still rising at the last planned step (bench/results/adapt.json at cbeb13b); at 20 it was no
# higher (21.7 at bf82ffb, from another start, against 21.8): the curve is flat within noise past about 300 steps.
# The plan times steps at the start and cannot foresee a later load: a busy machine runs longer.
DEFAULT_BUDGET_MINUTES = 20.0


def adapt_gallery(gallery_dir: str | Path, *, budget_minutes: float = DEFAULT_BUDGET_MINUTES, max_steps: int | None = None,
                  seed: int = 0, holdout_fraction: float = 0.2, overrides: dict[str, Any] | None = None,
                  work_dir: str | Path | None = None, batch_size: int = 64, num_workers: int = 2) -> dict[str, Any]:
    """Adapt the gallery's model to the gallery (module docstring); returns the outcome record (also written to
    the work folder's `result.json`): before / after figures, the plan, and the installed revision if any.

    overrides: training fields of `adapt_plan.OVERRIDABLE` set by hand instead of by the recipe."""
    if not math.isfinite(budget_minutes) or budget_minutes <= 0:
        raise ValueError(f"--budget_minutes must be > 0, got {budget_minutes}")
    deadline = time.monotonic() + 60 * budget_minutes
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max_steps must be >= 1, got {max_steps}")
    unknown = sorted(set(overrides or {}) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"cannot override {unknown}; adapt's recipe takes {', '.join(OVERRIDABLE)}")
    gallery_dir = Path(gallery_dir)
    if not (gallery_dir / store.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{gallery_dir}: not a gallery folder (no {store.CONFIG_FILE})")
    work = Path(work_dir) if work_dir else gallery_dir.with_name(gallery_dir.name + ".adapt")
    with _work_lock(work):
        gallery = Gallery.load(gallery_dir)
        start_model, embedder = _start_model(gallery, gallery_dir, work)
        request = {"start_model": gallery.model_tag.to_dict(), "budget_minutes": budget_minutes, "seed": seed,
                   "max_steps": max_steps, "holdout_fraction": holdout_fraction,
                   "overrides": {k: v for k, v in sorted((overrides or {}).items()) if v is not None}}
        # The recipe's numbers are checked (by TrainingConfig's own rules) before any image is read.
        training_config(GalleryImages(work / IMAGES_FILE, work, None), work, start_model,
                        recipe(2, request["overrides"], max_steps or 100), image_size=embedder.processor.image_size,
                        max_steps=max_steps or 100, eval_steps=1, save_steps=1, seed=seed, batch_size=batch_size,
                        num_workers=num_workers).validate()
        plan = load_plan(work, request)
        if plan is None:
            _clear(work)
            plan = _make_plan(gallery, gallery_dir, work, start_model, embedder, request, deadline, batch_size,
                              num_workers)
        else:
            print(f"resuming the adaptation planned in {work / PLAN_FILE}")
        images = GalleryImages(work / IMAGES_FILE, Path(plan["image_root"]), plan["center_box"])
        _print_plan(plan, deadline)
        trained = _train(work, images, plan, start_model, deadline, batch_size, num_workers)
        after = _measure(load_embedder(str(work / RUN_DIR), flip_test=gallery.model_tag.flip_test), images, plan,
                         batch_size, num_workers, "measuring the adapted model")[0]
        before = plan["before"]
        result = {"gallery": str(gallery_dir), "before": before, "after": after, "training": trained,
                  "holdout": plan["holdout"], "seed": seed, "recipe": plan["recipe"], "installed": False,
                  "plan": {key: plan[key] for key in ("counts", "max_steps", "steps_chosen_by", "timing")}}
        print(f"held-out individuals, start:   {describe(before)}\n"
              f"held-out individuals, adapted: {describe(after)}")
        if after["mean"]["map"] > before["mean"]["map"]:
            result["installed"] = True
            result.update(install(gallery_dir, work, work / RUN_DIR, images, plan, result, batch_size=batch_size,
                                  num_workers=num_workers))
            print(f"installed: {gallery_dir} revision {result['revision']}, model {result['model']} (the previous "
                  f"revision is kept in {gallery_dir / 'revisions' / result['replaced_revision']}; "
                  f"`wildreid adapt --gallery {gallery_dir} --undo` returns to it)")
            _remove_run(work)
        else:
            print(f"not installed: the adapted model is not better on the held-out individuals (mAP "
                  f"{100 * after['mean']['map']:.1f} vs {100 * before['mean']['map']:.1f} at the start, top-1 "
                  f"{100 * after['mean']['top1']:.1f} vs {100 * before['mean']['top1']:.1f}); {gallery_dir} is "
                  f"unchanged (revision {store.read_config(gallery_dir).get('revision')})")
        (work / RESULT_FILE).write_text(_json(result))
    return result


@contextlib.contextmanager
def _work_lock(work: Path) -> Iterator[None]:
    """One `adapt` per work folder: a second fails at once."""
    work.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(work / ".adapt.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise store.GalleryBusyError(f"another `wildreid adapt` is using {work}; wait for it to finish") from None
    try:
        yield
    finally:
        lock.release()


def _start_model(gallery: Gallery, gallery_dir: Path, work: Path):
    """The model training starts from (a path or Hub id for `init_from`) and the gallery's embedder, checked to be
    the one whose weights embedded the gallery."""
    reference = store.resolve_model_reference(gallery.model_tag.model_name_or_path, gallery_dir)
    if reference.startswith("timm:") or is_onnx_export(reference):
        raise ValueError(f"{gallery_dir} was indexed with {reference}, which adapt cannot train: it trains a wildreid "
                         "torch model (for an ONNX export, index with the model folder it was exported from)")
    embedder = load_gallery_embedder(gallery, gallery_dir, None, "torch")
    gallery.model_tag.require_same(model_tag(embedder), f"embeddings of {embedder.name}")
    if reference.startswith("imagenet:"):  # ImageNet weights on the fly: saved as a model folder to start from
        reference = str(work / "start_model")
        if not (Path(reference) / "config.json").is_file():
            embedder.model.save_pretrained(reference)
    return reference, embedder


def _clear(work: Path) -> None:
    """Start over: what an adaptation planned for another request left in the work folder goes."""
    if (work / PLAN_FILE).exists():
        print(f"{work} holds an adaptation planned for another model or other options: starting over")
    for name in (PLAN_FILE, TRAINED_FILE, RESULT_FILE, IMAGES_FILE, RUN_DIR, "probe"):
        path = work / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _make_plan(gallery: Gallery, gallery_dir: Path, work: Path, start_model: str, embedder, request: dict,
               deadline: float, batch_size: int, num_workers: int) -> dict[str, Any]:
    """Hold individuals out, measure the start on them, size the run; saved as the work folder's plan."""
    rows = gallery_images(gallery, gallery_dir)
    holdout = choose_holdout(rows, request["holdout_fraction"], request["seed"], gallery_dir)
    images = write_images(rows, holdout, work, gallery.center_box)
    held_out = {name for chosen in holdout.values() for name in chosen["individuals"]}
    photos = Counter(row["identity"] for row in rows)
    counts = {"images": len(rows), "individuals": len(photos), "holdout_individuals": len(held_out),
              "holdout_images": sum(photos[name] for name in held_out),
              "train_individuals": sum(n >= MIN_PHOTOS for name, n in photos.items() if name not in held_out)}
    counts["train_images"] = counts["images"] - counts["holdout_images"]  # single photos included: they load
    plan = {"request": request, "start_model": request["start_model"], "holdout": holdout,
            "image_root": str(images.image_root), "center_box": gallery.center_box, "counts": counts}
    print(f"adapt {gallery_dir}: {counts['images']} images of {counts['individuals']} individuals; "
          f"{counts['holdout_individuals']} individuals ({counts['holdout_images']} images, seed {request['seed']}) "
          f"held out to measure on, listed in {work / PLAN_FILE}")
    plan["before"], seconds_per_image = _measure(embedder, images, plan, batch_size, num_workers,
                                                 "measuring the start")
    across_sightings = all(chosen["across_sightings"] for chosen in holdout.values())  # as `_measure` measures
    fields = recipe(counts["train_individuals"], request["overrides"], request["max_steps"] or 10 ** 9,
                    across_sightings)
    seconds_per_step, reason = None, "--max_steps"
    max_steps = request["max_steps"]
    after = seconds_after_training(seconds_per_image, counts["holdout_images"], counts["images"],
                                   gallery.local_features_config is not None, len(fields["weight_interpolation"]))
    if max_steps is None:
        probe = training_config(images, work, start_model, fields, image_size=embedder.processor.image_size,
                                max_steps=1, eval_steps=1, save_steps=1, seed=0, batch_size=batch_size,
                                num_workers=num_workers)
        seconds_per_step = measure_step_seconds(probe, work)
        max_steps, reason = steps_for_budget(
            deadline - time.monotonic(), seconds_per_step, seconds_per_image, train_images=counts["train_images"],
            holdout_images=counts["holdout_images"], after_training=after,
            batch_images=fields["identities_per_batch"] * fields["images_per_identity"])
        fields = recipe(counts["train_individuals"], request["overrides"], max_steps, across_sightings)
    eval_steps, save_steps = schedule(max_steps, seconds_per_step)
    plan.update(recipe=fields, max_steps=max_steps, steps_chosen_by=reason, eval_steps=eval_steps,
                save_steps=save_steps, seconds_after_training=after,
                timing={"seconds_per_step": seconds_per_step, "seconds_per_image": seconds_per_image})
    save_plan(work, plan)
    return plan


def _print_plan(plan: dict, deadline: float) -> None:
    fields, timing = plan["recipe"], plan["timing"]
    finish = datetime.now() + timedelta(seconds=max(0.0, deadline - time.monotonic()))
    print(f"plan: {plan['max_steps']} steps of {fields['identities_per_batch']}x{fields['images_per_identity']} images "
          f"({plan['steps_chosen_by']}; {fields['frozen_backbone_stages']} backbone stages frozen, head from "
          f"prototypes, learning rates {fields['learning_rate']:g} / {fields['backbone_learning_rate']:g})"
          + (f", a step takes {timing['seconds_per_step']:.2f} s here" if timing["seconds_per_step"] else "")
          + f"; done by about {finish:%H:%M} (--budget_minutes {plan['request']['budget_minutes']:g})")
    print(f"start (the gallery's model as it is): {describe(plan['before'])}")


def _train(work: Path, images: GalleryImages, plan: dict, start_model: str, deadline: float, batch_size: int,
           num_workers: int) -> dict[str, Any]:
    """Train (or resume) the planned run, within the time left after what must follow it; a finished run is
    not trained again. Ctrl-C / SIGTERM checkpoint and stop (the trainer's handling), saying how to resume."""
    from ..training import NonFiniteLossError, Trainer
    from ..training.checkpoints import latest_checkpoint_or_none

    if (work / TRAINED_FILE).is_file():
        return _load_json(work / TRAINED_FILE)
    minutes = (deadline - time.monotonic() - plan["seconds_after_training"]) / 60
    if minutes <= 0:
        raise ValueError(f"--budget_minutes left no time to train (the rest of adapt needs about "
                         f"{plan['seconds_after_training'] / 60:.1f} minutes); give more")
    resume = latest_checkpoint_or_none(work / RUN_DIR) is not None
    config = training_config(images, work, start_model, plan["recipe"], image_size=plan["start_model"]["image_size"],
                             max_steps=plan["max_steps"],
                             eval_steps=plan["eval_steps"], save_steps=plan["save_steps"], seed=plan["request"]["seed"],
                             batch_size=batch_size, num_workers=num_workers, resume=resume, max_train_minutes=minutes)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = Trainer(config).run()
    except SystemExit:  # stopped by a signal after its checkpoint
        print(f"adapt stopped: the gallery is unchanged; run the same command again to resume ({work})")
        raise
    except NonFiniteLossError as error:
        raise ValueError(f"training diverged ({error}); the gallery is unchanged: lower --learning_rate / "
                         "--backbone_learning_rate") from None
    finally:
        for sig, handler in handlers.items():  # the trainer's handlers only delay a Ctrl-C to the next step
            signal.signal(sig, handler)
    trained = {key: summary.get(key) for key in ("total_steps", "planned_steps", "best_step", "best_mean_map",
                                                 "weight_interpolation", "images_per_second")}
    (work / TRAINED_FILE).write_text(_json(trained))
    return trained


def _measure(embedder, images: GalleryImages, plan: dict, batch_size: int, num_workers: int,
             desc: str) -> tuple[dict[str, Any], float]:
    """Held-out figures of `embedder` (`adapt_data.holdout_figures`) and the seconds it took an image."""
    dataset = load_specs([images.spec(HOLDOUT)])
    started = time.perf_counter()
    embedded = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=batch_size,
                             num_workers=num_workers, desc=desc)
    seconds_per_image = (time.perf_counter() - started) / max(1, len(dataset))
    rows = embedded.indices
    column = {name: np.asarray(dataset[name], dtype=object)[rows] for name in ("identity", "species")}
    figures = holdout_figures(embedded.vectors, column["identity"], column["species"], encounters_of(dataset)[rows],
                              plan["holdout"])
    return figures, seconds_per_image


def _remove_run(work: Path) -> None:
    """After an install the training run serves nothing (its model is in the gallery) and its checkpoints are large;
    the work folder keeps the plan, the CSVs that say which images trained and the result."""
    shutil.rmtree(work / RUN_DIR, ignore_errors=True)
    (work / TRAINED_FILE).unlink(missing_ok=True)


def _json(values: dict) -> str:
    import json

    from ..records import json_default

    return json.dumps(values, indent=1, default=json_default) + "\n"


def _load_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def add_adapt_command(commands) -> None:
    """`wildreid adapt`: the sub-command's flags."""
    adapt = commands.add_parser("adapt", help="fine-tune the gallery's model on its own labelled photos; installed "
                                              "as a new revision only when it measures better on held-out individuals")
    adapt.add_argument("--gallery", required=True, help="gallery folder written by `wildreid index`")
    adapt.add_argument("--budget_minutes", type=float, default=DEFAULT_BUDGET_MINUTES,
                       help="wall time of the whole command (training steps are sized to fit; default "
                            f"{DEFAULT_BUDGET_MINUTES:g})")
    adapt.add_argument("--max_steps", type=int, help="training steps (default: what the budget allows, at most 20 "
                                                     "passes over the training images)")
    adapt.add_argument("--holdout_fraction", type=float, default=0.2,
                       help="share of each species' individuals held out to measure on (at least 2)")
    adapt.add_argument("--seed", type=int, default=0, help="which individuals are held out, and the training's seed")
    for name, kind in (("learning_rate", float), ("backbone_learning_rate", float), ("frozen_backbone_stages", int),
                       ("freeze_backbone_steps", int)):
        adapt.add_argument(f"--{name}", type=kind, help="as for train.py (default: adapt's recipe)")
    adapt.add_argument("--augmentation", nargs="+", metavar="KEY=VALUE",
                       help="training augmentation overrides as for train.py, e.g. horizontal_flip_p=0.5 for a species "
                            "whose left and right flanks look alike")
    adapt.add_argument("--weight_interpolation", type=float, nargs="*",
                       help="WiSE-FT ratios to validate after training (default 0.25 0.5 0.75; the flag alone: none)")
    adapt.add_argument("--work_dir", help="work folder (default: <gallery>.adapt beside the gallery)")
    adapt.add_argument("--undo", action="store_true",
                       help="switch the gallery back to the revision whose model adapt (or calibrate's choice of "
                            "embedding or keypoint extractor) replaced")
    adapt.add_argument("--batch_size", type=int, default=64, help="images per embedding batch")
    adapt.add_argument("--num_workers", type=int, default=2, help="image-loading processes (at most the cores)")
    adapt.add_argument("--num_threads", type=int,
                       help="torch CPU threads (default: $WILDREID_NUM_THREADS, else the cores this process may use)")


def run_adapt(args) -> int:
    """Run `wildreid adapt` from parsed flags; Ctrl-C outside training (which checkpoints first) stops the same way."""
    if args.undo:
        done = undo(Path(args.gallery))
        print(f"{args.gallery}: back to the model and keypoints of revision {done['restored']} as revision {done['revision']} "
              f"(the revision it replaces is kept in {Path(args.gallery) / 'revisions' / done['kept']})")
        return 0
    from ..training.arguments import augmentation_overrides

    overrides = {name: getattr(args, name) for name in OVERRIDABLE}
    try:
        overrides["augmentation"] = augmentation_overrides(args.augmentation) or None
        adapt_gallery(args.gallery, budget_minutes=args.budget_minutes, max_steps=args.max_steps, seed=args.seed,
                      holdout_fraction=args.holdout_fraction, overrides=overrides, work_dir=args.work_dir,
                      batch_size=args.batch_size, num_workers=args.num_workers)
    except KeyboardInterrupt:
        print("adapt stopped: the gallery is unchanged; run the same command again to resume")
        return 130
    return 0
