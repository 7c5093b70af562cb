"""Building galleries and identifying query images with a model: what `wildreid index | calibrate |
identify` run. Embedding goes through `wildreid.embedding` (the shared preprocessing; with several
Accelerate processes each embeds its share), storage and search through `wildreid.identification.gallery`."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from hub_datasets.boxes import center_boxes
from hub_datasets.specs import center_box_of, load_specs

from ..embedding import LoadedEmbedder, LoadFailure, embed_dataset, load_embedder, undecoded
from ..embedding.images import batched_crops, describe_source
from ..embedding.onnx_runtime import OnnxEmbedder
from ..embedding.training_record import fitted_on_training_images
from ..evaluation.protocols import encounters_of
from ..matching import LocalFeatureCache, LocalFeatureExtractor
from ..matching.descriptor_index import check_index_type
from ..matching.keypoints import DEFAULT_MAX_KEYPOINTS, DEFAULT_MAX_SIDE, LocalFeatures
from . import store
from .gallery import Gallery
from .gallery_methods import MAX_FIT_IMAGES, GalleryScorer, fit_method_choice, fitted_images, needs_local
from .model_tag import ModelTag, preprocessing_signature, weights_content_hash

logger = logging.getLogger(__name__)


def model_tag(embedder: LoadedEmbedder, name: str | None = None) -> ModelTag:
    """The embedding space of a model: its name (default: as loaded), a hash of its exact weights, width
    and preprocessing. An ONNX export carries its source weights' hash (fp32 shares the torch model's tag,
    int8 does not)."""
    if isinstance(embedder.model, OnnxEmbedder):
        revision = embedder.model.revision
    else:
        revision = weights_content_hash(embedder.model.state_dict())
    return ModelTag(
        model_name_or_path=name or embedder.name, revision=revision,
        embedding_dim=int(embedder.model.embedding_dim), image_size=int(embedder.processor.image_size),
        preprocessing=preprocessing_signature(embedder.processor.to_dict()),
        flip_test=embedder.flip_test,
    )


def _metadata(dataset: Dataset, rows: np.ndarray) -> list[dict]:
    raw = undecoded(dataset)
    records = []
    for row in rows.tolist():
        record = raw[row]
        records.append({
            "image_id": record["image_id"], "identity": record["identity"], "species": record["species"],
            "path": (record["image"] or {}).get("path"), "viewpoint": record.get("viewpoint"),
            "encounter": record.get("encounter"), "bbox": record.get("bbox"), "theta": record.get("theta"),
        })
    return records


def _accelerator():
    """An Accelerator when launched with several processes (`accelerate launch -m wildreid.identification.cli ...`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        return Accelerator()
    return None


def build_gallery(model: str, datasets: list[str], output: str | os.PathLike, *, data_dir: str | None = None,
                  local_features: bool | str = False, max_keypoints: int = DEFAULT_MAX_KEYPOINTS, batch_size: int = 64,
                  num_workers: int = 2, overwrite: bool = False, runtime: str = "torch",
                  flip_test: bool | None = None, local_max_side: int = DEFAULT_MAX_SIDE,
                  aliked_variant: str | None = None, aliked_weights: str | None = None,
                  aliked_scales: list[float] | None = None, descriptor_index: str = "auto") -> tuple[Gallery, list]:
    """Embed every image of the dataset specs into a new gallery folder; returns it and the skipped images.

    local_features: False, or the extractor of the gallery's keypoint cache, "sift" (True) or "aliked"
    (`keypoints.LocalFeatureExtractor`, with `max_keypoints`, `local_max_side` and, for ALIKED, the variant, other
    weights and pyramid scales); the gallery records its config and extracts its queries the same way.
    descriptor_index: the kind of index over those keypoints (`DescriptorIndex.build`'s index_type; "auto"
    is exact for small galleries and IVF-SQ8 beyond, "ivfpq" compresses each descriptor to 64 bytes of codes).

    The folder's writer lock is taken before anything is embedded, so a second `index` into the same folder
    fails at once; the model is recorded relative to the gallery when it is a local folder."""
    accelerator = _accelerator()
    main_process = accelerator is None or accelerator.is_main_process
    if main_process:  # before the lock file is created in a folder that may not be ours
        store.check_new_folder(Path(output), overwrite)
    with store.writer_lock(output) if main_process else contextlib.nullcontext():
        if main_process:
            store.check_new_folder(Path(output), overwrite)
        extractor = None
        check_index_type(descriptor_index)  # before anything is embedded
        if local_features:  # a bad extractor setting (or ALIKED weights file) fails before anything is embedded
            extractor = LocalFeatureExtractor(
                "sift" if local_features is True else local_features, max_keypoints, local_max_side,
                **({"variant": aliked_variant, "weights": aliked_weights, "scales": aliked_scales}
                   if local_features == "aliked" else {})).load()
        return _build_gallery(model, datasets, output, accelerator, data_dir=data_dir, local_features=extractor,
                              batch_size=batch_size, num_workers=num_workers, runtime=runtime, flip_test=flip_test,
                              descriptor_index=descriptor_index)


def _build_gallery(model: str, datasets: list[str], output: str | os.PathLike, accelerator, *, data_dir: str | None,
                   local_features: LocalFeatureExtractor | None, batch_size: int, num_workers: int, runtime: str,
                   flip_test: bool | None, descriptor_index: str) -> tuple[Gallery, list]:
    embedder = load_embedder(model, device=accelerator.device if accelerator else None, runtime=runtime,
                             flip_test=flip_test)
    center_box = _shared_center_box(datasets)  # before anything is loaded
    dataset = load_specs(datasets, data_dir=data_dir)
    embedded = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=batch_size,
                             num_workers=num_workers, accelerator=accelerator, desc="indexing")
    if len(embedded.indices) == 0:
        raise ValueError(f"no image of {datasets} could be embedded")
    gallery = Gallery()
    gallery.center_box, gallery.descriptor_index_type = center_box, descriptor_index
    gallery.add(embedded.vectors, _metadata(dataset, embedded.indices),
                model_tag(embedder, store.model_reference(model, output)))
    cache = None
    if local_features is not None:  # the extractor's config is recorded in the gallery, reused by its queries
        extractor = local_features
        features, failed = keypoints_of_rows(dataset, embedded.indices, extractor)
        if failed:  # embedded but not matchable: the cache must cover every gallery image
            raise ValueError(f"local features failed for {len(failed)} embedded images, e.g. {failed[0].file}: "
                             f"{failed[0].reason}")
        cache = LocalFeatureCache.from_features(np.asarray(dataset["image_id"], dtype=object)[embedded.indices],
                                                features, extractor.config)
    if accelerator is None or accelerator.is_main_process:
        gallery.save(output, local_features=cache, overwrite=True)  # checked under the lock above
    return gallery, embedded.failures


def _shared_center_box(specs: list[str]) -> float | None:
    """The one `center_box` of a gallery's specs: its query photos are cropped the same way, so the specs
    must agree (a folder of loose photos beside a CSV with boxes can still share one: rows with a box keep it)."""
    values = {spec: center_box_of(spec) for spec in specs}
    if len(set(values.values())) > 1:
        listed = ", ".join(f"{spec} ({'whole photo' if value is None else f'center_box={value}'})"
                           for spec, value in values.items())
        raise ValueError(f"a gallery's photos must be cropped one way, its queries get the same: {listed}; "
                         "give every spec the same center_box (or none)")
    return next(iter(values.values()), None)


def load_queries(specs: list[str], gallery: Gallery, data_dir: str | None, gallery_dir: str | os.PathLike,
                  skipped: list[tuple[str, str]] | None = None) -> Dataset:
    """Query specs loaded as the gallery's photos were cropped: rows without a box get the gallery's
    `center_box` (a spec asking for another is warned about, naming both). `skipped`: see `load_specs`."""
    dataset = load_specs(specs, data_dir=data_dir, skipped=skipped)
    for spec in specs:
        if center_box_of(spec) not in (None, gallery.center_box):
            logger.warning("%s asks for center_box=%s but %s's photos were cropped with %s: the queries will not "
                           "look like the gallery", spec, center_box_of(spec), gallery_dir,
                           "the whole photo" if gallery.center_box is None else f"center_box={gallery.center_box}")
    if gallery.center_box is None:
        return dataset
    return center_boxes(dataset, gallery.center_box, f"queries of {gallery_dir}")


def load_gallery_embedder(gallery: Gallery, gallery_dir: str | os.PathLike, model: str | None, runtime: str, *,
                          device: str | None = None) -> LoadedEmbedder:
    """The embedder for a gallery's queries: `model`, or the model the gallery was built with (a local one is
    recorded relative to the gallery), with the gallery's test-time flip, which is part of its embedding space
    (an ONNX export made with the other setting is refused, saying so)."""
    return load_embedder(model or store.resolve_model_reference(gallery.model_tag.model_name_or_path, gallery_dir),
                         device=device, runtime=runtime, flip_test=gallery.model_tag.flip_test)


def gallery_and_model(gallery_dir: str | os.PathLike, model: str | None,
                       runtime: str) -> tuple[Gallery, LoadedEmbedder, ModelTag]:
    gallery = Gallery.load(gallery_dir)
    embedder = load_gallery_embedder(gallery, gallery_dir, model, runtime)
    tag = model_tag(embedder)
    gallery.model_tag.require_same(tag, f"embeddings of {embedder.name}")
    return gallery, embedder, tag


def keypoints_of_rows(dataset: Dataset, rows: np.ndarray, extractor: LocalFeatureExtractor
                      ) -> tuple[list[LocalFeatures | None], list[LoadFailure]]:
    """`extractor.extract_paths` on the dataset's `rows` (each cropped to its box and rotation): one entry per row,
    None where the image failed, and the failures."""
    raw = undecoded(dataset).select(rows.tolist())
    return extractor.extract_paths(list(raw["image"]), list(raw["bbox"]), [t or 0.0 for t in raw["theta"]])


def local_features_of(dataset: Dataset, rows: np.ndarray, config: dict) -> list[LocalFeatures]:
    """Keypoints of the dataset's `rows` with a gallery's extractor settings; an image whose keypoints
    cannot be computed gets none (it is then answered with the global method, which says so)."""
    extractor = LocalFeatureExtractor(**config)
    features, failures = keypoints_of_rows(dataset, rows, extractor)
    for failure in failures:
        logger.warning("no keypoints for %s: %s", failure.file, failure.reason)
    return [extractor.empty() if item is None else item for item in features]


def calibrate_gallery(gallery_dir: str | os.PathLike, datasets: list[str], *, model: str | None = None,
                      method: str | None = None, data_dir: str | None = None, batch_size: int = 64,
                      num_workers: int = 2, runtime: str = "torch", max_fit_images: int | None = MAX_FIT_IMAGES,
                      exclude_same_encounter: bool = False) -> tuple[float, dict]:
    """Fit the gallery's "new individual" threshold and score calibration on labelled validation images
    (known individuals, and ideally some absent from the gallery) and, per species, the scoring method
    (`gallery_methods.fit_method_choice`; default "auto" when the gallery has keypoints, else "global");
    saves both in the gallery. Returns the threshold and the per-species method choice. With
    `exclude_same_encounter` the method is fitted and chosen without pairs of one encounter (the images'
    `encounter`): what a query of a new sighting will meet; the threshold is fitted as before."""
    with store.writer_lock(gallery_dir, create=False):  # load, calibrate and save as one step
        gallery, embedder, tag = gallery_and_model(gallery_dir, model, runtime)
        method = calibration_method(gallery, method, str(gallery_dir))  # refused before any image is loaded
        dataset = load_queries(datasets, gallery, data_dir, gallery_dir)
        fitted_on_training_images(embedder.name, datasets, f"{gallery_dir}'s threshold and method choice")
        threshold, choices = fit_calibration(gallery, embedder, tag, dataset, method=method, batch_size=batch_size,
                                             num_workers=num_workers, max_fit_images=max_fit_images,
                                             exclude_same_encounter=exclude_same_encounter, where=str(gallery_dir))
        gallery.save(gallery_dir, overwrite=True)
    return threshold, choices


def calibration_method(gallery: Gallery, method: str | None, where: str) -> str:
    """The method to fit: `method`, by default auto where the gallery has keypoints and global where it has none."""
    method = method or ("auto" if gallery.local_features_config else "global")
    if needs_local(method) and gallery.local_features_config is None:
        raise ValueError(f"{where}: --method {method} needs the gallery's keypoints; rebuild it with "
                         "`wildreid index --local-features`, or use --method global")
    return method


def fit_calibration(gallery: Gallery, embedder: LoadedEmbedder, tag: ModelTag, dataset: Dataset, *,
                    method: str | None = None, batch_size: int = 64, num_workers: int = 2,
                    max_fit_images: int | None = MAX_FIT_IMAGES, exclude_same_encounter: bool = False,
                    where: str = "the gallery") -> tuple[float, dict]:
    """What `calibrate_gallery` fits, on a gallery in memory (not saved): the threshold and score calibration from
    the labelled `dataset` (loaded as the gallery's queries are), then the per-species method choice."""
    method = calibration_method(gallery, method, where)
    images = embed_calibration_images(embedder, dataset, batch_size=batch_size, num_workers=num_workers)
    threshold = fit_threshold(gallery, tag, images)
    choices = choose_methods(method, images, dataset, gallery, max_fit_images=max_fit_images,
                             exclude_same_encounter=exclude_same_encounter)
    gallery.calibration["method_choice"] = choices
    return threshold, choices


@dataclass
class CalibrationImages:
    """The labelled calibration images that loaded (`rows` of their dataset), embedded by one model."""

    vectors: np.ndarray
    rows: np.ndarray
    identities: np.ndarray
    image_ids: np.ndarray
    species: np.ndarray


def embed_calibration_images(embedder: LoadedEmbedder, dataset: Dataset, *, batch_size: int = 64,
                             num_workers: int = 2, desc: str = "calibrating") -> CalibrationImages:
    embedded = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=batch_size,
                             num_workers=num_workers, desc=desc)
    identities, image_ids, species = (np.asarray(dataset[name], dtype=object)[embedded.indices]
                                      for name in ("identity", "image_id", "species"))
    return CalibrationImages(embedded.vectors, embedded.indices, identities, image_ids, species)


def fit_threshold(gallery: Gallery, tag: ModelTag, images: CalibrationImages) -> float:
    """The new-individual threshold and score calibration (replacing `gallery.calibration`); calibration images that
    are gallery images are left out of their own search."""
    return gallery.calibrate_new_individual_threshold(images.vectors, images.identities, tag,
                                                      query_image_ids=list(images.image_ids))


def choose_methods(method: str, images: CalibrationImages, dataset: Dataset, gallery: Gallery, *,
                   features: list[LocalFeatures] | None = None, extractor_config: dict | None = None,
                   max_fit_images: int | None = MAX_FIT_IMAGES, exclude_same_encounter: bool = False) -> dict:
    """The per-species method choice (`fit_method_choice`) on the calibration images' embeddings. `features`: their
    keypoints (`keypoints_to_fit`) when already extracted (they do not depend on the model), made by
    `extractor_config` (default the gallery's), else extracted here when `method` needs them."""
    config = extractor_config or gallery.local_features_config
    if features is None and needs_local(method):
        features = keypoints_to_fit(dataset, images, config, max_fit_images)
    encounters = encounters_of(dataset)[images.rows] if exclude_same_encounter else None
    return fit_method_choice(method, images.vectors, images.identities, images.species, features, config,
                             max_images=max_fit_images, encounters=encounters)


def keypoints_to_fit(dataset: Dataset, images: CalibrationImages, config: dict, max_fit_images: int | None,
                     extracted: dict[int, LocalFeatures] | None = None) -> list[LocalFeatures]:
    """Keypoints of the calibration `images` (aligned with their rows) for the method choice: only the images it is
    fitted on (`fitted_images`) are read, the others get none. `extracted`: keypoints by dataset row made with
    `config` earlier, reused, and extended with those extracted now."""
    extracted = {} if extracted is None else extracted
    fitted = images.rows[fitted_images(images.identities, images.species, max_fit_images)]
    missing = np.asarray([row for row in fitted.tolist() if row not in extracted], dtype=int)
    if len(missing):
        extracted.update(zip(missing.tolist(), local_features_of(dataset, missing, config)))
    empty = LocalFeatureExtractor(**config).empty()
    return [extracted.get(row, empty) for row in images.rows.tolist()]


def identify(gallery_dir: str | os.PathLike, *, images: list[str] | None = None, datasets: list[str] | None = None,
             model: str | None = None, method: str = "auto", top_k: int = 5, threshold: float | None = None,
             data_dir: str | None = None, batch_size: int = 32, num_workers: int = 2,
             runtime: str = "torch") -> tuple[list, list[LoadFailure]]:
    """Top-k individuals (and the "new individual" decision) for query image files or dataset specs.
    Unreadable queries are returned as failures, never fatal.

    method: "auto" (the gallery's per-species choice from `calibrate`, else global), "global", "local" or
    "fusion". Where no query can need keypoints, the whole gallery is searched by cosine (faiss); otherwise
    each query meets the gallery images of its species (`gallery_methods.GalleryScorer`)."""
    if bool(images) == bool(datasets):
        raise ValueError("give query --images or --datasets (one of them)")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"the new-individual threshold must be a finite number, got {threshold}")
    gallery, embedder, tag = gallery_and_model(gallery_dir, model, runtime)
    scorer = GalleryScorer(gallery, gallery_dir, method)
    extractor = LocalFeatureExtractor(**gallery.local_features_config) if scorer.uses_local else None
    if images:
        device = next((p.device for p in embedder.model.parameters()), torch.device("cpu"))  # ONNX: none

        @torch.inference_mode()
        def embed(crops):
            pixels = torch.stack([embedder.processor.resize(crop) for crop in crops]).to(device)
            return embedder.model(pixel_values=embedder.processor.normalize(pixels)).embeddings.float().cpu().numpy()

        if extractor is None:
            return gallery.identify_images(images, embed, tag, top_k, batch_size=batch_size, threshold=threshold)
        return _identify_images_by_method(scorer, extractor, images, embed, top_k, batch_size, threshold)
    unusable: list[tuple[str, str]] = []  # rows whose photo is missing or unreadable: listed, never fatal
    dataset = load_queries(datasets, gallery, data_dir, gallery_dir, skipped=unusable)
    embedded = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=batch_size,
                             num_workers=num_workers, desc="identifying")
    embedded.failures[:0] = [LoadFailure(row, reason) for row, reason in unusable]
    query_ids = list(np.asarray(dataset["image_id"], dtype=object)[embedded.indices])
    if extractor is None:
        return gallery.identify(embedded.vectors, tag, top_k, query_ids=query_ids, threshold=threshold), embedded.failures
    features = local_features_of(dataset, embedded.indices, gallery.local_features_config)
    species = list(np.asarray(dataset["species"], dtype=object)[embedded.indices])
    return scorer.identify(embedded.vectors, features, species, query_ids, top_k, threshold), embedded.failures


def _identify_images_by_method(scorer: GalleryScorer, extractor: LocalFeatureExtractor, images: list[str], embed,
                               top_k: int, batch_size: int, threshold: float | None) -> tuple[list, list[LoadFailure]]:
    """Image files of unknown species, batch by batch: embedded, keypoints extracted, scored by `scorer`."""
    failures: list[LoadFailure] = []
    results = []
    for batch in batched_crops(images, batch_size, failures=failures, center_box=scorer.gallery.center_box):
        crops = [crop for _, crop in batch]
        ids = [describe_source(images[i]) for i, _ in batch]
        results.extend(scorer.identify(np.asarray(embed(crops)), [extractor.extract(crop) for crop in crops],
                                       [None] * len(crops), ids, top_k, threshold))
    return results, failures
