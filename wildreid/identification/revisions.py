"""A gallery switched to another embedding model (or keypoint extractor) as one new revision, the replaced revision kept
loadable, and back.

`wildreid adapt` (its adapted model) and `wildreid calibrate` (the embedding it chose) switch a gallery's model the same
way, under the gallery's writer lock: every gallery image embedded with the new model (`embed_gallery_again`; the
keypoint cache is kept, keypoints do not depend on the model, unless calibrate also chose another extractor, whose
keypoint cache and descriptor index the new revision then holds), then the current revision kept as a gallery folder of
its own, `revisions/<revision>/` (`keep_revision`: its files hard-linked, its model path made relative to there), then
the new revision saved with `Gallery.replaced_revision` naming the kept one. `identify --gallery
<gallery>/revisions/<revision>` still answers as before, and `undo` (`wildreid adapt --undo`) switches back. A store
save deletes only earlier revisions' files at the top of the gallery folder, never these sub-folders.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from datasets import Dataset

from hub_datasets.specs import load_specs

from ..embedding import LoadedEmbedder, embed_dataset
from ..matching.descriptor_cache import LocalFeatureCache
from ..records import json_default
from . import store
from .adapt_data import gallery_images, write_images
from .gallery import Gallery
from .local_retrieval import load_descriptor_index
from .model_tag import ModelTag

REVISIONS_DIR = "revisions"
EMBED_AGAIN_FILE = "gallery_images.csv"  # every image of the gallery as it is when embedded again


def embed_gallery_again(current: Gallery, gallery_dir: Path, embedder: LoadedEmbedder, tag: ModelTag, work: Path, *,
                        batch_size: int, num_workers: int, desc: str) -> Gallery:
    """The current gallery's images read again from the paths `index` recorded and embedded with `embedder` (tag
    `tag`), in a new uncalibrated gallery with the same metadata, crop and keypoint cache; `work` holds the CSV that
    names them. Any image that cannot be embedded again is an error: the gallery must keep every individual."""
    return embedded_again(current, read_gallery_again(current, gallery_dir, work), embedder, tag,
                          batch_size=batch_size, num_workers=num_workers, desc=desc)


def read_gallery_again(current: Gallery, gallery_dir: Path, work: Path) -> Dataset:
    """The current gallery's images, one row each in gallery order, read from the paths `index` recorded and
    cropped as they were; `work` holds the CSV that names them."""
    everything = write_images(gallery_images(current, gallery_dir), {}, work, current.center_box,
                              name=EMBED_AGAIN_FILE)
    return load_specs([everything.spec()])


def embedded_again(current: Gallery, dataset: Dataset, embedder: LoadedEmbedder, tag: ModelTag, *, batch_size: int,
                   num_workers: int, desc: str) -> Gallery:
    """`embed_gallery_again` of the gallery's images as `read_gallery_again` gives them."""
    embedded = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=batch_size,
                             num_workers=num_workers, desc=desc)
    if embedded.failures:
        failure = embedded.failures[0]
        raise ValueError(f"{len(embedded.failures)} gallery images could not be embedded again (e.g. {failure.file}: "
                         f"{failure.reason}); the gallery was not changed")
    return same_images(current, embedded.vectors, tag)


def same_images(current: Gallery, vectors, tag: ModelTag) -> Gallery:
    """A new uncalibrated gallery of the current one's images (its rows, in order) with `vectors` embedded by `tag`'s
    model; the crop, search settings and keypoint cache carried over."""
    switched = Gallery(tag, approximate_threshold=current.approximate_threshold)
    switched.add(vectors, current.metadata, tag)
    switched.created, switched.center_box = current.created, current.center_box
    switched.keep_local_features_of(current)
    return switched


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


def switch(gallery_dir: Path, switched: Gallery, kept: Path, local_features: LocalFeatureCache | None = None) -> str:
    """Save `switched` as the gallery's new revision, recording `kept` (`keep_revision`) as the one it replaced;
    call under the writer lock. `local_features`: a keypoint cache of another extractor to save with it (its
    descriptor index built), else the current one is kept. Returns the new revision's name."""
    switched.replaced_revision = kept.name
    switched.save(gallery_dir, local_features=local_features, overwrite=True)
    return store.read_config(gallery_dir)["revision"]


def _moved_reference(reference: str, old_dir: Path, new_dir: Path) -> str:
    """A gallery's model reference for a gallery moved from `old_dir` to `new_dir` (a Hub id stays as it is)."""
    resolved = store.resolve_model_reference(reference, old_dir)
    return store.model_reference(resolved, new_dir) if Path(resolved).is_dir() else reference


def undo(gallery_dir: Path) -> dict[str, Any]:
    """Switch the gallery back to the revision its current model replaced, as a new revision (the current one is
    kept under `revisions/` first); refused when its model was not switched by adapt or calibrate."""
    with store.writer_lock(gallery_dir, create=False):
        current = Gallery.load(gallery_dir)
        if current.replaced_revision is None:
            raise ValueError(f"{gallery_dir}'s model {current.model_tag.model_name_or_path} was not installed by "
                             "`wildreid adapt` nor chosen by `wildreid calibrate`: there is no earlier model to "
                             "return to")
        previous_dir = gallery_dir / REVISIONS_DIR / current.replaced_revision
        previous = Gallery.load(previous_dir)
        kept = keep_revision(gallery_dir)
        previous.model_tag = replace(previous.model_tag, model_name_or_path=_moved_reference(
            previous.model_tag.model_name_or_path, previous_dir, gallery_dir))
        keypoints = index = None
        if previous.local_features_config != current.local_features_config:  # calibrate switched the extractor
            keypoints = Gallery.load_local_features(previous_dir, previous.local_features_config)
            index, _ = load_descriptor_index(previous_dir, list(previous.metadata["image_id"]),
                                             previous.local_features_config, keypoints, previous.descriptor_index_type)
        previous.save(gallery_dir, local_features=keypoints, descriptor_index=index, overwrite=True)
    return {"restored": current.replaced_revision, "kept": kept.name,
            "revision": store.read_config(gallery_dir)["revision"]}
