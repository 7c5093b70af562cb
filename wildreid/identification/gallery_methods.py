"""Scoring methods of a gallery, per species: "global" (cosine), "local" (one-vs-many LNBNN retrieval with
spatial verification), "fusion" (global top-B union local top-B, calibrated) and "auto".

`wildreid calibrate --method auto` fits, per species, union fusion on the labelled calibration images
(leave-one-out within them, so never on the queries it will answer) and keeps the method with the best
validation mAP (`wildreid.matching.methods.AutoMethod`); the choice, its validation figures and the fitted
fusion are recorded in `gallery.calibration["method_choice"][species]`. `wildreid identify --method` then
scores each query against the gallery images of its species with that method, local votes coming from the
gallery's saved descriptor index (`local_retrieval`), and ranks individuals by their best image's score.
The index holds every species, as HotSpotter's does: a query's votes are counted for its species' images
only, each descriptor's LNBNN normaliser still comes from the whole gallery.

The new-individual decision stays on the best cosine: the calibrated threshold is a cosine threshold.
The review app ranks with the same scorer (`identify_photos`: the photos of one animal, each gallery image
scoring its best over them), so a reviewer sees what `wildreid identify` answers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..matching.descriptor_cache import LocalFeatureCache
from ..matching.keypoints import UNIT_VECTOR_METHODS, LocalFeatures, check_descriptors
from ..matching.local_matcher import LocalMatcher
from ..matching.methods import AUTO_CHOICES, AutoMethod, ImageSet
from ..matching.one_vs_many import DescriptorIndex, OneVsManyMatcher
from ..matching.selection import leave_one_out_figures, validation_pairs
from ..matching.union_fusion import UnionFusion
from . import store
from .gallery import Gallery
from .local_retrieval import load_descriptor_index
from .results import CandidateIndividual, IdentificationResult

REQUESTABLE = ("auto", *AUTO_CHOICES)
# Images per species the method choice is fitted on: the leave-one-out fit grows with the square of the images
# (about 15 min for dog's 480 on 2 CPU cores), and a few hundred images choose as well as thousands.
MAX_FIT_IMAGES = 500
# What calibrate weighs embedding models and keypoint extractors by (`mean_chosen_map`).
CHOSEN_BY = "mean over species of the chosen method's validation mAP, leave-one-out on the calibration images"
NO_KEYPOINTS_NOTE = "no keypoints in the query: answered with the global method"


def needs_local(method: str) -> bool:
    return method in ("auto", "local", "fusion")


def fit_method_choice(method: str, embeddings: np.ndarray, identities: Sequence[Any], species: Sequence[Any],
                      features: Sequence[LocalFeatures] | None, extractor_config: dict[str, Any] | None, *,
                      shortlist: int = 20, num_workers: int | None = None, max_images: int | None = MAX_FIT_IMAGES,
                      seed: int = 0, encounters: Sequence[Any] | None = None) -> dict[str, dict[str, Any]]:
    """{species: {"method", "requested", "validation": {global/local/fusion: {"top1", "map"}}, "fusion", ...}}
    fitted leave-one-out on labelled calibration images; species without two images of one individual are
    left out (nothing to validate on), and a method other than global with no such species is refused.
    A species with more than `max_images` images is fitted on whole individuals drawn in a seeded order up to
    that many images (None: all). With `encounters` (each image's sighting), pairs of one encounter are left
    out of the fit and of the figures it chooses by, and a species with no re-sighted individual is left out."""
    if method not in REQUESTABLE:
        raise ValueError(f"unknown method {method!r}; choose one of {REQUESTABLE}")
    if needs_local(method) and features is None:
        raise ValueError(f"method {method!r} needs local features: build the gallery with `wildreid index "
                         "--local-features`, or calibrate with --method global")
    identities = np.asarray([str(i) for i in identities], dtype=object)
    species = np.asarray(["" if s is None else str(s) for s in species], dtype=object)
    groups = None if encounters is None else np.asarray(list(encounters), dtype=object)
    choices = {}
    for name in sorted(set(species)):
        mask = _whole_individuals(identities, species == name, max_images, seed)
        if not validation_pairs(identities[mask], None if groups is None else groups[mask]).any():
            continue  # nothing to validate on (no individual seen twice, or, with encounters, in two of them)
        images = ImageSet(identities[mask], species[mask], embeddings[mask],
                          None if features is None else [f for f, keep in zip(features, mask) if keep],
                          dict(extractor_config or {}), None if groups is None else groups[mask])
        if method == "global":
            cosine = images.embeddings @ images.embeddings.T
            choices[name] = {"method": "global", "requested": "global", "validation_queries": int(mask.sum()),
                             "validation": {"global": leave_one_out_figures(cosine, images.identities, images.encounters)}}
            continue
        fusion = UnionFusion(shortlist=shortlist, num_workers=num_workers)
        across = groups is not None
        figures = AutoMethod(fusion).fit(images, across) if method == "auto" else fusion.fit(images, across)
        choices[name] = {"method": figures.get("choice", method), "requested": method,
                         "validation": figures["validation"], "reason": figures.get("reason"),
                         "combiner": figures["combiner"], "validation_queries": figures["validation_queries"],
                         "fusion": fusion.to_dict(), "exclude_same_encounter": across}
    if not choices and method != "global":
        raise ValueError("no species of the calibration images has two images of one individual"
                         + (" from different encounters" if groups is not None else "")
                         + ": the method choice needs labelled pairs")
    return choices


@dataclass
class PhotoScores:
    """The photos of one animal scored against the gallery images of its species (`identify_photos`)."""

    rows: np.ndarray  # (R,) the gallery rows scored
    scores: np.ndarray  # (P, R) the method's scores; -inf for photos left out (no keypoints)
    cosine: np.ndarray  # (P, R)
    method: str  # the method that gave `scores`
    note: str | None  # why it differs from the one asked for, or why photos were left out

    def best_over_photos(self) -> tuple[np.ndarray, np.ndarray]:
        """(R,) each row's best score over the photos, and the photo that gave it."""
        photo = self.scores.argmax(axis=0)
        return self.scores[photo, np.arange(self.scores.shape[1])], photo


def fitted_images(identities: Sequence[Any], species: Sequence[Any], max_images: int | None = MAX_FIT_IMAGES,
                  seed: int = 0) -> np.ndarray:
    """Which images `fit_method_choice` fits on (a mask): per species, whole individuals up to `max_images`; what
    needs keypoints before the fit (extracting the others would be wasted)."""
    identities = np.asarray([str(i) for i in identities], dtype=object)
    species = np.asarray(["" if s is None else str(s) for s in species], dtype=object)
    mask = np.zeros(len(identities), dtype=bool)
    for name in set(species):
        mask |= _whole_individuals(identities, species == name, max_images, seed)
    return mask


def chosen_figures(choices: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per species, the chosen method and its validation figures (of a `fit_method_choice` result)."""
    return {name: {"method": choice["method"], "top1": choice["validation"][choice["method"]]["top1"],
                   "map": choice["validation"][choice["method"]]["map"],
                   "validation_queries": choice["validation_queries"]}
            for name, choice in choices.items()}


def mean_chosen_map(choices: dict[str, dict[str, Any]]) -> float | None:
    """`CHOSEN_BY`: the mean over species of the chosen method's validation mAP; None when no species could be
    validated."""
    maps = [figures["map"] for figures in chosen_figures(choices).values()]
    return float(np.mean(maps)) if maps else None


def _whole_individuals(identities: np.ndarray, mask: np.ndarray, max_images: int | None, seed: int) -> np.ndarray:
    """`mask` narrowed to whole individuals, in a seeded order, while they fit in `max_images` images."""
    if max_images is None or mask.sum() <= max_images:
        return mask
    names, counts = np.unique(identities[mask], return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    kept = names[order][np.cumsum(counts[order]) <= max_images]
    return mask & np.isin(identities, kept)


class GalleryScorer:
    """Answers queries with the gallery's per-species methods (see the module docstring).

    requested: "auto" (the gallery's recorded choice per species, else global), "global", "local" or
        "fusion" (needs `wildreid calibrate --method fusion|auto` first: the combination is fitted there).
    keypoints / descriptor_index: the gallery's keypoint cache and its descriptor index (every gallery
        image, in order) when the caller holds them already (the review app); else read from `directory`
        when first needed.
    """

    def __init__(self, gallery: Gallery, directory: str | os.PathLike, requested: str = "auto", *,
                 keypoints: LocalFeatureCache | None = None, descriptor_index: DescriptorIndex | None = None):
        if requested not in REQUESTABLE:
            raise ValueError(f"unknown method {requested!r}; choose one of {REQUESTABLE}")
        self.gallery, self.directory, self.requested = gallery, Path(directory), requested
        self.choices = (gallery.calibration or {}).get("method_choice") or {}
        self._keypoints, self._given_index = keypoints, descriptor_index
        self._local: tuple[DescriptorIndex, list[LocalFeatures]] | None = None
        if requested in ("local", "fusion"):
            self._local_index()  # fail before any query is embedded

    @property
    def species_names(self) -> list[str]:
        return self.gallery.metadata["species"].dropna().unique().tolist()

    def method_for(self, species: str | None) -> str:
        if self.requested != "auto":
            return self.requested
        if species is None and len(self.species_names) == 1:
            species = self.species_names[0]
        return str((self.choices.get(species or "") or {}).get("method", "global"))

    @property
    def uses_local(self) -> bool:
        """Whether any query may need local features."""
        if self.requested in ("local", "fusion"):
            return True
        return self.requested == "auto" and any(c.get("method") != "global" for c in self.choices.values())

    def descriptor_index(self) -> DescriptorIndex | None:
        """The gallery's descriptor index (read or built when first needed); None when the gallery keeps no
        SIFT or ALIKED keypoints (the families one-vs-many retrieval indexes)."""
        config = self.gallery.local_features_config
        if config is None or config.get("method", "sift") not in UNIT_VECTOR_METHODS:
            return None
        return self._local_index()[0]

    def _local_index(self) -> tuple[DescriptorIndex, list[LocalFeatures]]:
        if self._local is None:
            image_ids = list(self.gallery.metadata["image_id"])
            if self._given_index is not None and self._keypoints is not None:
                if self._given_index.num_images != len(image_ids):
                    raise ValueError(f"the descriptor index holds {self._given_index.num_images} images, the gallery "
                                     f"{len(image_ids)}")
                self._local = (self._given_index, self._keypoints.get_many(image_ids))
            else:
                self._local = load_descriptor_index(self.directory, image_ids, self.gallery.local_features_config,
                                                    self._keypoints, self.gallery.descriptor_index_type)
        return self._local

    def require_fusion(self, species: Sequence[str]) -> None:
        """Raise, naming the gallery and the command to run, unless a fusion is recorded for every species."""
        missing = [name for name in species if "fusion" not in (self.choices.get(name) or {})]
        if missing:
            raise ValueError(f"{self.directory}: no fusion fitted for species {missing}; run `wildreid calibrate "
                             f"--method fusion --gallery {self.directory} --datasets <labelled images of them>` (or "
                             "--method auto) first, or use --method local or global")

    def _fusion(self, species: str | None) -> UnionFusion:
        if species is None and len(self.species_names) > 1:
            raise ValueError(f"{self.directory}: fusion is fitted per species; give the query's species, one of "
                             f"the gallery's {sorted(self.species_names)}")
        species = species if species is not None else next(iter(self.species_names), "")
        self.require_fusion([species])
        return UnionFusion.from_dict(self.choices[species]["fusion"])

    def _threshold(self, threshold: float | None) -> float | None:
        return threshold if threshold is not None else (self.gallery.calibration or {}).get("new_individual_threshold")

    def _rows(self, species: str | None) -> tuple[str | None, np.ndarray]:
        """(species, gallery rows) a query of `species` meets: its species' images, or all images (species
        None) when its species is unknown or absent from the gallery."""
        gallery_species = self.gallery.metadata["species"].to_numpy(dtype=object)
        if species and species in set(gallery_species):
            return species, np.flatnonzero(gallery_species == species)
        return None, np.arange(len(self.gallery))

    def _scores(self, species: str | None, rows: np.ndarray, embeddings: np.ndarray,
                features: Sequence[LocalFeatures] | None) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        """(method, scores, cosine, queries without keypoints) of queries against gallery `rows`."""
        method = self.method_for(species)
        cosine = (embeddings @ self.gallery.embeddings[rows].T).astype(np.float32)
        if method == "global":
            return method, cosine, cosine, np.zeros(len(embeddings), dtype=bool)
        scores = self._local_scores(method, species, embeddings, list(features), rows)
        return method, scores, cosine, np.array([len(f) == 0 for f in features], dtype=bool)

    def identify(self, embeddings: np.ndarray, features: Sequence[LocalFeatures] | None,
                 species: Sequence[str | None], query_ids: Sequence[str], top_k: int = 5,
                 threshold: float | None = None) -> list[IdentificationResult]:
        """Top-k individuals per query, each query against the gallery images of its species (all images
        when its species is unknown or absent from the gallery)."""
        threshold = self._threshold(threshold)
        results: list[IdentificationResult | None] = [None] * len(embeddings)
        keys = np.asarray(["" if s is None else str(s) for s in species], dtype=object)
        for key in sorted(set(keys)):
            queries = np.flatnonzero(keys == key)
            name, rows = self._rows(key)
            method, scores, cosine, blind = self._scores(
                name, rows, embeddings[queries], None if features is None else [features[q] for q in queries])
            scores[blind] = cosine[blind]
            for i, q in enumerate(queries):
                used = "global" if blind[i] else method
                results[q] = self._result(query_ids[q], scores[i], cosine[i], rows, top_k, used, threshold,
                                          NO_KEYPOINTS_NOTE if blind[i] else None)
        return results

    def score_photos(self, embeddings: np.ndarray, features: Sequence[LocalFeatures] | None,
                     species: str | None) -> PhotoScores:
        """The photos of ONE animal against the gallery images of `species` (all images when None), by its
        method. A photo without keypoints has no local evidence: under local or fusion it is left out when
        another photo has keypoints; when none has, the global method answers (`NO_KEYPOINTS_NOTE`), as
        `identify` answers such a query."""
        name, rows = self._rows(species)
        method, scores, cosine, blind = self._scores(name, rows, embeddings, features)
        if blind.all() and len(blind):
            return PhotoScores(rows, cosine, cosine, "global", NO_KEYPOINTS_NOTE)
        note = None
        if blind.any():
            scores[blind] = -np.inf
            note = (f"query photo(s) {', '.join(str(p + 1) for p in np.flatnonzero(blind))} have no keypoints: "
                    "ranked by the other photos")
        return PhotoScores(rows, scores, cosine, method, note)

    def identify_photos(self, embeddings: np.ndarray, features: Sequence[LocalFeatures] | None,
                        species: str | None, query_id: str = "query", top_k: int = 5,
                        threshold: float | None = None) -> tuple[IdentificationResult, PhotoScores]:
        """`identify` for the photos of ONE animal (the review app's query): each gallery image scores its best
        over the photos, an individual its best image; "new" when the best cosine of any photo is below the
        threshold. With one photo, the same answer as `identify`."""
        scored = self.score_photos(embeddings, features, species)
        best, _ = scored.best_over_photos()
        result = self._result(query_id, best, scored.cosine.max(axis=0), scored.rows, top_k, scored.method,
                              self._threshold(threshold), scored.note)
        return result, scored

    def _local_scores(self, method: str, species: str | None, embeddings: np.ndarray,
                      features: list[LocalFeatures], rows: np.ndarray) -> np.ndarray:
        index, gallery_features = self._local_index()
        self.check_query_features(features)
        fusion = self._fusion(species) if method == "fusion" else None
        verifier = LocalMatcher(method=(self.gallery.local_features_config or {}).get("method", "sift"))
        matcher = fusion.retrieval if fusion else OneVsManyMatcher(verifier=verifier)
        votes = matcher.votes(features, index, progress=False)[:, rows]
        reference = [gallery_features[row] for row in rows]
        if fusion is None:
            return matcher.verify(votes, features, reference, progress=False)
        config = dict(self.gallery.local_features_config or {})
        metadata = self.gallery.metadata
        queries = ImageSet(np.zeros(len(features), object), np.zeros(len(features), object), embeddings, features,
                           config)
        gallery = ImageSet(metadata["identity"].to_numpy(object)[rows], metadata["species"].to_numpy(object)[rows],
                           self.gallery.embeddings[rows], reference, config)
        return fusion.scores(queries, gallery, votes=votes)

    def check_query_features(self, features: Sequence[LocalFeatures]) -> None:
        """Raise, naming the gallery's extractor and what the queries' descriptors are, unless every query was
        extracted with the gallery's family (a SIFT gallery cannot answer ALIKED queries, nor the reverse)."""
        config = dict(self.gallery.local_features_config or {})
        method = config.get("method", "sift")
        for i, item in enumerate(features):
            try:
                check_descriptors(item.descriptors, method, f"query {i}", config.get("variant"))
            except ValueError as error:
                raise ValueError(f"{self.directory}: the gallery's local features are {method} ({config}); {error}: "
                                 "extract queries with the gallery's extractor (`LocalFeatureExtractor(**gallery."
                                 "local_features_config)`, as `wildreid identify` does)") from None

    def _result(self, query_id: str, scores: np.ndarray, cosine: np.ndarray, rows: np.ndarray, top_k: int,
                method: str, threshold: float | None, note: str | None) -> IdentificationResult:
        metadata = self.gallery.metadata
        identities = metadata["identity"].to_numpy(dtype=str)[rows]
        order = np.argsort(-scores, kind="stable")  # an individual's first image in this order is its best
        _, first = np.unique(identities[order], return_index=True)
        best = order[np.sort(first)[:top_k]]
        calibrator = self.gallery._calibrator() if method == "global" else None
        probabilities = calibrator.predict(scores[best]) if calibrator is not None and len(best) else [None] * len(best)
        candidates = []
        for column, p in zip(best, probabilities):
            row = rows[column]
            if method == "fusion":  # fused scores of shortlisted candidates are calibrated probabilities
                p = float(scores[column]) if 0.0 <= scores[column] <= 1.0 else None
            candidates.append(CandidateIndividual(
                identity=str(identities[column]), score=float(scores[column]), probability=None if p is None else float(p),
                image_id=str(metadata.at[row, "image_id"]), path=store.optional_text(metadata.at[row, "path"]),
                species=store.optional_text(metadata.at[row, "species"])))
        top_score = candidates[0].score if candidates else float("-inf")
        top_cosine = float(cosine.max()) if len(cosine) else float("-inf")
        return IdentificationResult(query=str(query_id), candidates=candidates, top_score=top_score,
                                    is_new=None if threshold is None else bool(top_cosine < threshold),
                                    threshold=threshold, method=method, note=note)
