"""Installing an adapted model into its gallery, and going back.

Installing is one new gallery revision, written under the gallery's writer lock as `index` and `calibrate` write:
the model is copied into the gallery folder (`models/<name>/`, with `adaptation.json`: how it was made and what it
replaced), every gallery image is embedded with it (the new model tag), the threshold and per-species method are
fitted again on the held-out individuals as `calibrate` fits them, and the manifest switches atomically. The
revision it replaces is first kept as a gallery folder of its own, `revisions/<revision>/` (its files hard-linked,
its model path made relative to there), so `identify --gallery <gallery>/revisions/<revision>` still answers as
before and `adapt --undo` switches back. A store save deletes only earlier revisions' files at the top of the
gallery folder, never these sub-folders.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from hub_datasets.specs import load_specs

from ..embedding import embed_dataset, load_embedder
from ..records import RecordFormat, json_default
from . import store
from .adapt_data import HOLDOUT, GalleryImages, gallery_images, write_images
from .gallery import Gallery
from .workflows import fit_calibration, model_tag

MODELS_DIR, REVISIONS_DIR = "models", "revisions"
ADAPTATION = RecordFormat("wildreid-adaptation", 1)
ADAPTATION_FILE = "adaptation.json"
INSTALL_FILE = "gallery_images.csv"  # every image of the gallery as it is at install time
MODEL_NAME = re.compile(r"\.?adapted-\d{8}T\d{6}-[0-9a-f]{8}(\.partial)?")
NOT_COPIED = ("checkpoints", "start_embedder.safetensors", "wildreid_run.json")  # training state, not the model


def install(gallery_dir: Path, work: Path, run_dir: Path, images: GalleryImages, plan: dict[str, Any],
            record: dict[str, Any], *, batch_size: int, num_workers: int) -> dict[str, Any]:
    """Install the model in `run_dir` into the gallery (module docstring); returns what was done, for the record."""
    with store.writer_lock(gallery_dir, create=False):
        current = Gallery.load(gallery_dir)
        if current.model_tag.revision != plan["start_model"]["revision"]:
            raise ValueError(f"{gallery_dir} was indexed again with another model ({current.model_tag}) while adapt "
                             f"ran; nothing was installed. Run adapt again to adapt the gallery as it is now")
        model_dir = _copy_model(run_dir, gallery_dir / MODELS_DIR)
        reference = store.model_reference(str(model_dir), gallery_dir)
        try:
            adapted, calibration = _adapted_gallery(current, gallery_dir, model_dir, work, images, plan,
                                                    batch_size, num_workers)
            kept = keep_revision(gallery_dir)
            installed = {"model": adapted.model_tag.model_name_or_path, "replaced_revision": kept.name, **calibration}
            ADAPTATION.save(model_dir / ADAPTATION_FILE, ADAPTATION.tag(**record, **installed), default=json_default)
            adapted.save(gallery_dir, overwrite=True)
        except BaseException:  # a model no revision uses is not left in the gallery folder
            if store.read_config(gallery_dir)["model"]["model_name_or_path"] != reference:
                shutil.rmtree(model_dir, ignore_errors=True)
            raise
    return {**installed, "revision": store.read_config(gallery_dir)["revision"]}


def _adapted_gallery(current: Gallery, gallery_dir: Path, model_dir: Path, work: Path, images: GalleryImages,
                     plan: dict[str, Any], batch_size: int, num_workers: int) -> tuple[Gallery, dict[str, Any]]:
    """The current gallery's images embedded with the adapted model and calibrated on the held-out images."""
    embedder = load_embedder(str(model_dir), flip_test=current.model_tag.flip_test)
    tag = model_tag(embedder, store.model_reference(str(model_dir), gallery_dir))
    everything = write_images(gallery_images(current, gallery_dir), {}, work, current.center_box, name=INSTALL_FILE)
    dataset = load_specs([everything.spec()])
    embedded = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=batch_size,
                             num_workers=num_workers, desc="embedding the gallery with the adapted model")
    if embedded.failures:
        failure = embedded.failures[0]
        raise ValueError(f"{len(embedded.failures)} gallery images could not be embedded again (e.g. {failure.file}: "
                         f"{failure.reason}); nothing was installed")
    adapted = Gallery(tag, approximate_threshold=current.approximate_threshold)
    adapted.add(embedded.vectors, current.metadata, tag)
    adapted.created, adapted.center_box = current.created, current.center_box
    adapted.local_features_config = current.local_features_config  # keypoints do not depend on the model: kept
    across = all(chosen["across_sightings"] for chosen in plan["holdout"].values())
    threshold, choices = fit_calibration(adapted, embedder, tag, load_specs([images.spec(HOLDOUT)]),
                                         batch_size=batch_size, num_workers=num_workers,
                                         exclude_same_encounter=across, where=str(gallery_dir))
    return adapted, {"new_individual_threshold": threshold,
                     "methods": {species: choice["method"] for species, choice in choices.items()},
                     "calibrated_across_sightings": across}


def _copy_model(run_dir: Path, models: Path) -> Path:
    """The trained model's files (not its checkpoints) copied to a new folder under `models`, which appears
    complete or not at all."""
    models.mkdir(exist_ok=True)
    for leftover in models.iterdir():  # ours, of an install killed before its switch: no revision uses it
        if MODEL_NAME.fullmatch(leftover.name) and (leftover.name.endswith(".partial")
                                                    or not (leftover / ADAPTATION_FILE).is_file()):
            shutil.rmtree(leftover, ignore_errors=True)
    name = f"adapted-{store.now().replace(':', '').replace('-', '')[:15]}-{os.urandom(4).hex()}"
    partial = models / f".{name}.partial"
    shutil.copytree(run_dir, partial, ignore=lambda folder, names: [n for n in names if n in NOT_COPIED])
    partial.rename(models / name)
    return models / name


def keep_revision(gallery_dir: Path) -> Path:
    """The gallery's current revision as a gallery folder of its own, `revisions/<revision>/` (module docstring);
    returned as it is when already kept."""
    config = store.read_config(gallery_dir)
    name = config.get("revision") or "before-revisions"
    target = gallery_dir / REVISIONS_DIR / name
    if (target / store.CONFIG_FILE).is_file():
        return target
    partial = target.with_name(f".{name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    names = ([entry["name"] for entry in config["files"].values()] if "files" in config else
             ["".join(names) for names in store.FILES.values() if (gallery_dir / "".join(names)).is_file()])
    for file_name in names:
        try:  # a hard link costs no space, and the gallery's save unlinks only its own name
            os.link(gallery_dir / file_name, partial / file_name)
        except OSError:
            shutil.copy2(gallery_dir / file_name, partial / file_name)
    config["model"]["model_name_or_path"] = _moved_reference(config["model"]["model_name_or_path"], gallery_dir, target)
    store.RECORD.save(partial / store.CONFIG_FILE, config, default=json_default)
    partial.rename(target)
    return target


def _moved_reference(reference: str, old_dir: Path, new_dir: Path) -> str:
    """A gallery's model reference for a gallery moved from `old_dir` to `new_dir` (a Hub id stays as it is)."""
    resolved = store.resolve_model_reference(reference, old_dir)
    return store.model_reference(resolved, new_dir) if Path(resolved).is_dir() else reference


def undo(gallery_dir: Path) -> dict[str, Any]:
    """Switch the gallery back to the revision the current adapted model replaced, as a new revision (the
    adapted one is kept under `revisions/` first); refused when the current model was not installed by adapt."""
    with store.writer_lock(gallery_dir, create=False):
        current = Gallery.load(gallery_dir)
        model = store.resolve_model_reference(current.model_tag.model_name_or_path, gallery_dir)
        if not (Path(model) / ADAPTATION_FILE).is_file():
            raise ValueError(f"{gallery_dir}'s model {current.model_tag.model_name_or_path} was not installed by "
                             "`wildreid adapt`: there is no adaptation to undo")
        replaced = ADAPTATION.load(Path(model) / ADAPTATION_FILE)["replaced_revision"]
        previous_dir = gallery_dir / REVISIONS_DIR / replaced
        previous = Gallery.load(previous_dir)
        kept = keep_revision(gallery_dir)
        previous.model_tag = replace(previous.model_tag, model_name_or_path=_moved_reference(
            previous.model_tag.model_name_or_path, previous_dir, gallery_dir))
        previous.save(gallery_dir, overwrite=True)
    return {"restored": replaced, "kept": kept.name, "revision": store.read_config(gallery_dir)["revision"]}
