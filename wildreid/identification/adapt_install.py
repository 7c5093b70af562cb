"""Installing an adapted model into its gallery.

Installing is one new gallery revision, written under the gallery's writer lock as `index` and `calibrate` write:
the model is copied into the gallery folder (`models/<name>/`, with `adaptation.json`: how it was made and what it
replaced), every gallery image is embedded with it (the new model tag), the threshold and per-species method are
fitted again on the held-out individuals as `calibrate` fits them, and the manifest switches atomically. The
revision it replaces is kept loadable under `revisions/` and `adapt --undo` switches back (`revisions`, shared with
`calibrate`'s choice of embedding).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from hub_datasets.specs import load_specs

from ..embedding import load_embedder
from ..records import RecordFormat, json_default
from . import store
from .adapt_data import HOLDOUT, GalleryImages
from .gallery import Gallery
from .revisions import embed_gallery_again, keep_revision, switch
from .workflows import fit_calibration, model_tag

MODELS_DIR = "models"
ADAPTATION = RecordFormat("wildreid-adaptation", 1)
ADAPTATION_FILE = "adaptation.json"
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
            switch(gallery_dir, adapted, kept)
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
    adapted = embed_gallery_again(current, gallery_dir, embedder, tag, work, batch_size=batch_size,
                                  num_workers=num_workers, desc="embedding the gallery with the adapted model")
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
