"""Leave-one-out and closed-set evaluation of any scoring method (`wildreid.methods`), per species.

A protocol decides which queries meet which gallery; the method only scores them. Methods that learn
(fusion's calibration, auto's choice) are fitted per species on the validation set of that species
(leave-one-out within it: a training split, never the test queries) and record what they chose.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
from datasets import Dataset

from ..embedding import Embeddings
from ..matching.methods import ImageSet, build_method
from .matching import LocalSet
from .metrics import retrieval_metrics_from_similarity
from .protocols import encounter_guarded, encounters_of, summarise

logger = logging.getLogger(__name__)


def image_set(dataset: Dataset, embedded: Embeddings | None, local: LocalSet | None,
              extractor_config: dict[str, Any] | None = None) -> ImageSet:
    """The rows readable by every scorer used (an image that failed either way is left out)."""
    rows = np.arange(len(dataset))
    if embedded is not None:
        rows = np.intersect1d(rows, embedded.indices)
    if local is not None:
        rows = np.intersect1d(rows, local.rows)
    vectors = None
    if embedded is not None:
        position = {row: i for i, row in enumerate(embedded.indices)}
        vectors = embedded.vectors[[position[row] for row in rows]]
    features = None
    if local is not None:
        position = {row: i for i, row in enumerate(local.rows)}
        features = [local.features[position[row]] for row in rows]
    return ImageSet(np.asarray(dataset["identity"], dtype=object)[rows], np.asarray(dataset["species"], dtype=object)[rows],
                    vectors, features, dict(extractor_config or {}), encounters_of(dataset)[rows])


def _has_pairs(images: ImageSet) -> bool:
    return len(set(images.identities)) < len(images.identities)


def evaluate_method(method_name: str, queries: ImageSet, gallery: ImageSet | None = None, *,
                    validation: ImageSet | None = None, shortlist: int = 20, num_workers: int | None = None,
                    training_species: Sequence[str] | None = None, exclude_same_encounter: bool = False) -> dict:
    """Results in `evaluate.py`'s shape: leave-one-out within `queries` (no gallery) or queries against
    `gallery` (closed set: queries of individuals absent from the gallery are left out). With
    `exclude_same_encounter` a query does not see its own encounter's photos in the metrics, and fusion and
    auto are fitted on `validation` without same-encounter pairs, to match."""
    per_species, left_out = {}, {}
    for name in sorted(set(queries.species)):
        q = queries.part(queries.species == name)
        g = None
        if gallery is None:
            if not _has_pairs(q):
                continue  # every identity has one image: nothing to retrieve
        else:
            g = gallery.part(gallery.species == name)
            q = q.part(np.isin(q.identities, list(set(g.identities))))
            if len(q) == 0:
                continue
        method = build_method(method_name, shortlist=shortlist, num_workers=num_workers)
        record: dict[str, Any] = {"method": method_name}
        if method_name in ("fusion", "auto"):
            if validation is None:
                raise ValueError(f"--method {method_name} fits on validation data: pass --val_datasets (a training split)")
            v = validation.part(validation.species == name)
            if not _has_pairs(v):
                logger.warning("no validation pairs of %s: %s fitted on all validation species", name, method_name)
                v = validation
            tick = time.perf_counter()
            record["fit"] = {**method.fit(v, exclude_same_encounter), "seconds": round(time.perf_counter() - tick, 2)}
            if method_name == "auto":
                record["chosen"] = record["fit"]["choice"]
        if q.local is not None and method_name in ("fusion", "auto") and (blind := int(q.without_keypoints().sum())):
            record["queries_answered_globally"] = blind  # no keypoints: the global ranking, said in the results
        tick = time.perf_counter()
        scores = method.scores(q, g)
        record["scoring_seconds"] = round(time.perf_counter() - tick, 2)
        groups = {}
        if exclude_same_encounter:
            groups = {"query_groups": q.encounters, "gallery_groups": q.encounters if g is None else g.encounters}
        metrics = encounter_guarded(name, lambda: retrieval_metrics_from_similarity(
            scores, q.identities, None if g is None else g.identities, leave_one_out=g is None, **groups),
            exclude_same_encounter, left_out)
        if metrics is not None:
            per_species[name] = {**metrics, **record}
    return summarise(per_species, "leave-one-out" if gallery is None else "closed-set", training_species, left_out)
