"""Evaluation protocols over embedded schema datasets, producing the results shape of `evaluate.py`::

    {"species": {name: {top1, top5, top10, top20, map, n_queries, n_identities, seen_in_training, ...}},
     "mean": {...}, "protocol": ..., "left_out": {name: why}  # only when a species could not be evaluated}

- leave-one-out: each image of a set queries all the others (MiewID's protocol).
- closed-set: query images against a gallery of other images whose identities all appear in it
  (MegaDescriptor's published protocol: test queried against train).
- open-set: queries against a gallery where some query identities are absent; a "new individual"
  threshold chosen on a validation set is applied to the test queries.

Leave-one-out and closed-set can exclude same-encounter matches (`exclude_same_encounter`): a query then
does not see the other photos of its own `encounter` (sighting, video), the easy matches of the same moment;
a species where that leaves no query an answer is named in `left_out` instead of failing the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from datasets import Dataset

from ..embedding import Embeddings
from .grouping import macro_average
from .metrics import NoAnswerableQueryError, retrieval_metrics, top1_matches
from .open_set import choose_new_individual_threshold, open_set_metrics

logger = logging.getLogger(__name__)
PROTOCOLS = ("leave-one-out", "closed-set", "open-set")


def _rows(dataset: Dataset, embedded: Embeddings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors with their identity and species labels, for the rows that were embedded."""
    identities = np.asarray(dataset["identity"], dtype=object)[embedded.indices]
    species = np.asarray(dataset["species"], dtype=object)[embedded.indices]
    return embedded.vectors, identities, species


def encounters_of(dataset: Dataset) -> np.ndarray:
    """Each row's `encounter` (None where the dataset has no such column)."""
    column = dataset["encounter"] if "encounter" in dataset.column_names else [None] * len(dataset)
    return np.asarray(column, dtype=object)


def _encounters(dataset: Dataset, embedded: Embeddings) -> np.ndarray:
    return encounters_of(dataset)[embedded.indices]


def _groups(encounters: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if encounters is None else encounters[mask]


def summarise(per_species: dict, protocol: str, training_species: Sequence[str] | None,
              left_out: dict[str, str] | None = None) -> dict:
    """The results shape above; `left_out` names each species that could not be evaluated, with why."""
    if not per_species:
        reasons = "; ".join(f"{name}: {why}" for name, why in (left_out or {}).items())
        raise ValueError("no species could be evaluated" + (f" ({reasons})" if reasons else
                                                            " (every identity has a single image?)"))
    for name, metrics in per_species.items():
        metrics["seen_in_training"] = None if training_species is None else name in training_species
    summary = {"species": per_species, "mean": macro_average(per_species), "protocol": protocol}
    if left_out:
        summary["left_out"] = dict(left_out)
    return summary


def encounter_guarded(name: str, compute: Callable[[], dict], exclude_same_encounter: bool,
                      left_out: dict[str, str]) -> dict | None:
    """`compute()`, or None with `name` and the reason put in `left_out` (and logged) when excluding
    same-encounter matches leaves no query of the species an answer (e.g. every individual seen in one
    encounter only). Without exclusion such an error is a real one and propagates, as does any other."""
    try:
        return compute()
    except NoAnswerableQueryError as error:
        if not exclude_same_encounter:
            raise
        logger.warning("%s left out: %s", name, error)
        left_out[name] = str(error)
        return None


def leave_one_out_by_species(dataset: Dataset, embedded: Embeddings, *, training_species: Sequence[str] | None = None,
                             exclude_same_encounter: bool = False) -> dict:
    """Leave-one-out retrieval within each species of an embedded set; with `exclude_same_encounter` a query
    does not see the other photos of its own encounter (`metrics`)."""
    vectors, identities, species = _rows(dataset, embedded)
    encounters = _encounters(dataset, embedded) if exclude_same_encounter else None
    per_species, left_out = {}, {}
    for name in sorted(set(species)):
        mask = species == name
        if len(set(identities[mask])) == len(identities[mask]):
            continue  # every identity has one image: nothing to retrieve
        metrics = encounter_guarded(name, lambda: retrieval_metrics(
            vectors[mask], identities[mask], query_groups=_groups(encounters, mask),
            gallery_groups=_groups(encounters, mask)), exclude_same_encounter, left_out)
        if metrics is not None:
            per_species[name] = metrics
    return summarise(per_species, "leave-one-out", training_species, left_out)


def closed_set_by_species(query_set: Dataset, query: Embeddings, gallery_set: Dataset, gallery: Embeddings, *,
                          training_species: Sequence[str] | None = None, exclude_same_encounter: bool = False) -> dict:
    """Query images against a gallery, per species; queries whose identity has no gallery image are left out
    (closed set: every query individual is known). `exclude_same_encounter`: as in `leave_one_out_by_species`."""
    q_groups = _encounters(query_set, query) if exclude_same_encounter else None
    g_groups = _encounters(gallery_set, gallery) if exclude_same_encounter else None
    q_vectors, q_ids, q_species = _rows(query_set, query)
    g_vectors, g_ids, g_species = _rows(gallery_set, gallery)
    per_species, left_out = {}, {}
    for name in sorted(set(q_species)):
        g_mask = g_species == name
        known = set(g_ids[g_mask])
        q_mask = (q_species == name) & np.isin(q_ids, list(known))
        if not q_mask.any():
            continue
        metrics = encounter_guarded(name, lambda: retrieval_metrics(
            q_vectors[q_mask], q_ids[q_mask], g_vectors[g_mask], g_ids[g_mask], query_groups=_groups(q_groups, q_mask),
            gallery_groups=_groups(g_groups, g_mask)), exclude_same_encounter, left_out)
        if metrics is not None:
            per_species[name] = metrics
    return summarise(per_species, "closed-set", training_species, left_out)


def open_set_by_species(query_set: Dataset, query: Embeddings, gallery_set: Dataset, gallery: Embeddings, *,
                        val_query_set: Dataset, val_query: Embeddings, val_gallery_set: Dataset, val_gallery: Embeddings,
                        training_species: Sequence[str] | None = None) -> dict:
    """Open-set identification per species: top-k/mAP over the known queries plus BAKS/BAUS/AUROC over all,
    with the "new individual" threshold of each species chosen on validation queries against a validation
    gallery (never on the test queries)."""
    q_vectors, q_ids, q_species = _rows(query_set, query)
    v_vectors, v_ids, v_species = _rows(val_query_set, val_query)
    vg_vectors, vg_ids, vg_species = _rows(val_gallery_set, val_gallery)
    g_vectors, g_ids, g_species = _rows(gallery_set, gallery)
    per_species = {}
    for name in sorted(set(q_species)):
        g_mask, q_mask, v_mask, vg_mask = g_species == name, q_species == name, v_species == name, vg_species == name
        if not g_mask.any() or not v_mask.any() or not vg_mask.any():
            raise ValueError(f"open-set on {name!r} needs gallery, validation-query and validation-gallery images of it")
        threshold = choose_new_individual_threshold(
            top1_matches(v_vectors[v_mask], v_ids[v_mask], vg_vectors[vg_mask], vg_ids[vg_mask]))
        matches = top1_matches(q_vectors[q_mask], q_ids[q_mask], g_vectors[g_mask], g_ids[g_mask])
        metrics = open_set_metrics(matches, threshold)
        known = q_mask & np.isin(q_ids, list(set(g_ids[g_mask])))
        if known.any():
            metrics.update(retrieval_metrics(q_vectors[known], q_ids[known], g_vectors[g_mask], g_ids[g_mask]))
        per_species[name] = metrics
    return summarise(per_species, "open-set", training_species)
