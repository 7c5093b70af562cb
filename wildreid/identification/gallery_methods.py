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
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..matching.keypoints import LocalFeatures
from ..matching.local_matcher import LocalMatcher
from ..matching.methods import AUTO_CHOICES, AutoMethod, ImageSet
from ..matching.one_vs_many import OneVsManyMatcher
from ..matching.selection import leave_one_out_figures
from ..matching.union_fusion import UnionFusion
from . import store
from .gallery import Gallery
from .local_retrieval import load_descriptor_index
from .results import CandidateIndividual, IdentificationResult

REQUESTABLE = ("auto", *AUTO_CHOICES)
NO_KEYPOINTS_NOTE = "no keypoints in the query: answered with the global method"


def needs_local(method: str) -> bool:
    return method in ("auto", "local", "fusion")


def fit_method_choice(method: str, embeddings: np.ndarray, identities: Sequence[Any], species: Sequence[Any],
                      features: Sequence[LocalFeatures] | None, extractor_config: dict[str, Any] | None, *,
                      shortlist: int = 20, num_workers: int | None = None) -> dict[str, dict[str, Any]]:
    """{species: {"method", "requested", "validation": {global/local/fusion: {"top1", "map"}}, "fusion", ...}}
    fitted leave-one-out on labelled calibration images; species without two images of one individual are
    left out (nothing to validate on), and a method other than global with no such species is refused."""
    if method not in REQUESTABLE:
        raise ValueError(f"unknown method {method!r}; choose one of {REQUESTABLE}")
    if needs_local(method) and features is None:
        raise ValueError(f"method {method!r} needs local features: build the gallery with `wildreid index "
                         "--local-features`, or calibrate with --method global")
    identities = np.asarray([str(i) for i in identities], dtype=object)
    species = np.asarray(["" if s is None else str(s) for s in species], dtype=object)
    choices = {}
    for name in sorted(set(species)):
        mask = species == name
        if len(set(identities[mask])) == mask.sum():
            continue
        images = ImageSet(identities[mask], species[mask], embeddings[mask],
                          None if features is None else [f for f, keep in zip(features, mask) if keep],
                          dict(extractor_config or {}))
        if method == "global":
            cosine = images.embeddings @ images.embeddings.T
            choices[name] = {"method": "global", "requested": "global", "validation_queries": int(mask.sum()),
                             "validation": {"global": leave_one_out_figures(cosine, images.identities)}}
            continue
        fusion = UnionFusion(shortlist=shortlist, num_workers=num_workers)
        figures = AutoMethod(fusion).fit(images) if method == "auto" else fusion.fit(images)
        choices[name] = {"method": figures.get("choice", method), "requested": method,
                         "validation": figures["validation"], "reason": figures.get("reason"),
                         "combiner": figures["combiner"], "validation_queries": figures["validation_queries"],
                         "fusion": fusion.to_dict()}
    if not choices and method != "global":
        raise ValueError("no species of the calibration images has two images of one individual: the method "
                         "choice needs labelled pairs")
    return choices


class GalleryScorer:
    """Answers queries with the gallery's per-species methods (see the module docstring).

    requested: "auto" (the gallery's recorded choice per species, else global), "global", "local" or
        "fusion" (needs `wildreid calibrate --method fusion|auto` first: the combination is fitted there).
    """

    def __init__(self, gallery: Gallery, directory: str | os.PathLike, requested: str = "auto"):
        if requested not in REQUESTABLE:
            raise ValueError(f"unknown method {requested!r}; choose one of {REQUESTABLE}")
        self.gallery, self.directory, self.requested = gallery, Path(directory), requested
        self.choices = (gallery.calibration or {}).get("method_choice") or {}
        self._local: tuple[Any, list[LocalFeatures]] | None = None
        if requested in ("local", "fusion"):
            self._local_index()  # fail before any query is embedded

    def method_for(self, species: str | None) -> str:
        if self.requested != "auto":
            return self.requested
        species_names = self.gallery.metadata["species"].dropna().unique().tolist()
        if species is None and len(species_names) == 1:
            species = species_names[0]
        return str((self.choices.get(species or "") or {}).get("method", "global"))

    @property
    def uses_local(self) -> bool:
        """Whether any query may need local features."""
        if self.requested in ("local", "fusion"):
            return True
        return self.requested == "auto" and any(c.get("method") != "global" for c in self.choices.values())

    def _local_index(self):
        if self._local is None:
            self._local = load_descriptor_index(self.directory, list(self.gallery.metadata["image_id"]),
                                                self.gallery.local_features_config)
        return self._local

    def _fusion(self, species: str | None) -> UnionFusion:
        if species is None:
            names = self.gallery.metadata["species"].dropna().unique().tolist()
            species = names[0] if len(names) == 1 else None
        record = self.choices.get(species or "") or {}
        if "fusion" not in record:
            raise ValueError(f"{self.directory}: no fusion fitted for species {species!r}; run `wildreid calibrate "
                             "--method fusion` (or auto) with labelled images of it first")
        return UnionFusion.from_dict(record["fusion"])

    def identify(self, embeddings: np.ndarray, features: Sequence[LocalFeatures] | None,
                 species: Sequence[str | None], query_ids: Sequence[str], top_k: int = 5,
                 threshold: float | None = None) -> list[IdentificationResult]:
        """Top-k individuals per query, each query against the gallery images of its species (all images
        when its species is unknown or absent from the gallery)."""
        gallery = self.gallery
        threshold = threshold if threshold is not None else (gallery.calibration or {}).get("new_individual_threshold")
        gallery_species = gallery.metadata["species"].to_numpy(dtype=object)
        results: list[IdentificationResult | None] = [None] * len(embeddings)
        keys = ["" if s is None else str(s) for s in species]
        for key in sorted(set(keys)):
            queries = np.flatnonzero(np.asarray(keys, dtype=object) == key)
            name = key if key and key in set(gallery_species) else None
            rows = np.flatnonzero(gallery_species == name) if name else np.arange(len(gallery))
            method = self.method_for(name)
            cosine = (embeddings[queries] @ gallery.embeddings[rows].T).astype(np.float32)
            scores = cosine if method == "global" else self._local_scores(method, name, embeddings[queries],
                                                                          [features[q] for q in queries], rows)
            blind = np.zeros(len(queries), dtype=bool)
            if method != "global":
                blind = np.array([len(features[q]) == 0 for q in queries], dtype=bool)
                scores[blind] = cosine[blind]
            for i, q in enumerate(queries):
                used = "global" if blind[i] else method
                results[q] = self._result(query_ids[q], scores[i], cosine[i], rows, top_k, used, threshold,
                                          NO_KEYPOINTS_NOTE if blind[i] else None)
        return results

    def _local_scores(self, method: str, species: str | None, embeddings: np.ndarray,
                      features: list[LocalFeatures], rows: np.ndarray) -> np.ndarray:
        index, gallery_features = self._local_index()
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
