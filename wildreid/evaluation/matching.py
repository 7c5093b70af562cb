"""Local-feature and fused (global + local) evaluation per species, in the same results shape as
`protocols`: `evaluate.py --method local|fusion`.

- local: SIFT keypoints on the shared crop, mutual nearest neighbours + ratio test, RANSAC-verified
  inlier count as the similarity; all pairs are matched (no model needed).
- fusion: WildFusion's recipe: calibrate the global cosine and the local score into match probabilities
  on validation pairs (`--val_datasets`, leave-one-out within them, per species), average them, and
  re-rank each query's global top-B shortlist with local matching, so local cost stays B per query.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from datasets import Dataset

from ..embedding import Embeddings, undecoded
from ..matching import FusionMatcher, LocalFeatureExtractor, LocalFeatures, LocalMatcher
from .grouping import macro_average
from .metrics import retrieval_metrics_from_similarity

logger = logging.getLogger(__name__)


@dataclass
class LocalSet:
    """Local features of the readable rows of a dataset, with their identities and species."""

    features: list[LocalFeatures]
    rows: np.ndarray
    identities: np.ndarray
    species: np.ndarray
    failures: list[dict]

    def part(self, mask: np.ndarray) -> "LocalSet":
        return LocalSet([f for f, keep in zip(self.features, mask) if keep], self.rows[mask], self.identities[mask],
                        self.species[mask], [])


def extract_local_set(dataset: Dataset, extractor: LocalFeatureExtractor, *, num_workers: int | None = None,
                      progress: bool = True) -> LocalSet:
    """Keypoints of every row's annotated crop; unreadable images are reported and skipped."""
    raw = undecoded(dataset)
    features, failures = extractor.extract_paths(list(raw["image"]), list(raw["bbox"]), [t or 0.0 for t in raw["theta"]],
                                                 num_workers=num_workers, progress=progress)
    ok = np.array([f is not None for f in features], dtype=bool)
    return LocalSet(
        [f for f in features if f is not None], np.flatnonzero(ok),
        np.asarray(dataset["identity"], dtype=object)[ok], np.asarray(dataset["species"], dtype=object)[ok],
        [f.to_dict() for f in failures],
    )


def _global_part(dataset: Dataset, embedded: Embeddings, local: LocalSet) -> np.ndarray:
    """Embedding rows aligned with a local set's rows (both skip unreadable images)."""
    position = {row: i for i, row in enumerate(embedded.indices)}
    missing = [row for row in local.rows if row not in position]
    if missing:
        raise ValueError(f"{len(missing)} images have local features but no embedding (e.g. row {missing[0]})")
    return embedded.vectors[[position[row] for row in local.rows]]


def _summary(per_species: dict, protocol: str, training_species) -> dict:
    if not per_species:
        raise ValueError("no species could be evaluated (every identity has a single image?)")
    for name, metrics in per_species.items():
        metrics["seen_in_training"] = None if training_species is None else name in training_species
    return {"species": per_species, "mean": macro_average(per_species), "protocol": protocol}


def local_by_species(queries: LocalSet, matcher: LocalMatcher, gallery: LocalSet | None = None, *,
                     num_workers: int | None = None, training_species=None) -> dict:
    """Leave-one-out within `queries` (no gallery) or queries vs gallery, per species, on local scores."""
    per_species = {}
    for name in sorted(set(queries.species)):
        q = queries.part(queries.species == name)
        if gallery is None:
            if len(set(q.identities)) == len(q.identities):
                continue
            similarity = matcher.score_within(q.features, num_workers=num_workers)
            per_species[name] = retrieval_metrics_from_similarity(similarity, q.identities, q.identities, leave_one_out=True)
        else:
            g = gallery.part(gallery.species == name)
            known = np.isin(q.identities, list(set(g.identities)))
            if not known.any():
                continue
            q = q.part(known)
            similarity = matcher.score(q.features, g.features, num_workers=num_workers)
            per_species[name] = retrieval_metrics_from_similarity(similarity, q.identities, g.identities)
    return _summary(per_species, "leave-one-out" if gallery is None else "closed-set", training_species)


def _fit_fusion(matcher: LocalMatcher, shortlist: int, vectors: np.ndarray, local: LocalSet,
                num_workers: int | None) -> FusionMatcher:
    fusion = FusionMatcher(shortlist=shortlist)
    similarity = vectors @ vectors.T
    fusion.fit(similarity, lambda candidates: matcher.score(local.features, local.features, candidates,
                                                            num_workers=num_workers, progress=False),
               local.identities, local.identities, leave_one_out=True)
    return fusion


def fusion_by_species(query_set: Dataset, query_embedded: Embeddings, queries: LocalSet, *,
                      val_set: Dataset, val_embedded: Embeddings, val_local: LocalSet, matcher: LocalMatcher,
                      shortlist: int = 100, gallery_set: Dataset | None = None, gallery_embedded: Embeddings | None = None,
                      gallery: LocalSet | None = None, num_workers: int | None = None, training_species=None) -> dict:
    """Fused scores per species; calibrated on the validation set's leave-one-out pairs of that species
    (all validation species pooled when it has none)."""
    q_vectors = _global_part(query_set, query_embedded, queries)
    v_vectors = _global_part(val_set, val_embedded, val_local)
    g_vectors = None if gallery is None else _global_part(gallery_set, gallery_embedded, gallery)
    pooled = None
    per_species = {}
    for name in sorted(set(queries.species)):
        in_val = val_local.species == name
        if in_val.sum() >= 2 and len(set(val_local.identities[in_val])) < in_val.sum():
            fusion = _fit_fusion(matcher, shortlist, v_vectors[in_val], val_local.part(in_val), num_workers)
        else:
            logger.warning("no validation pairs of %s: fusion calibrated on all validation species", name)
            pooled = pooled or _fit_fusion(matcher, shortlist, v_vectors, val_local, num_workers)
            fusion = pooled
        in_q = queries.species == name
        q, qv = queries.part(in_q), q_vectors[in_q]
        if gallery is None:
            if len(set(q.identities)) == len(q.identities):
                continue
            fused = fusion.rerank(qv @ qv.T, lambda c: matcher.score(q.features, q.features, c, num_workers=num_workers,
                                                                     progress=False), leave_one_out=True)
            per_species[name] = retrieval_metrics_from_similarity(fused, q.identities, q.identities, leave_one_out=True)
        else:
            in_g = gallery.species == name
            g, gv = gallery.part(in_g), g_vectors[in_g]
            known = np.isin(q.identities, list(set(g.identities)))
            if not known.any():
                continue
            q, qv = q.part(known), qv[known]
            fused = fusion.rerank(qv @ gv.T, lambda c: matcher.score(q.features, g.features, c, num_workers=num_workers,
                                                                     progress=False))
            per_species[name] = retrieval_metrics_from_similarity(fused, q.identities, g.identities)
    return _summary(per_species, "leave-one-out" if gallery is None else "closed-set", training_species)
