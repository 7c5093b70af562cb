"""The identification bench's methods beyond wildreid's one-call ones.

- The pairwise references, which match every query against every gallery image and so run on a seeded sample of
  queries where a set is large: wildreid's pairwise SIFT ("SIFT pairwise") and the plain SIFT recipe of issue 30
  ("plain recipe", `plain_recipe.py`). Both use the same sample, so their rows compare.
- auto's choice among both extractors' methods ("auto (SIFT or ALIKED)").
"""
from __future__ import annotations

import time

import numpy as np

from plain_recipe import SETTINGS, recipe_scores
from wildreid.matching.methods import PairwiseLocalMethod
from wildreid.matching.selection import known_groups, ranking_figures


EXTRACTOR_LABELS = {"sift": "SIFT", "aliked": "ALIKED"}


def choose_across_extractors(fits: dict[str, dict]) -> tuple[str, dict]:
    """auto's rule (`AutoMethod.choose`) over both extractors' fitted validation figures (`UnionFusion.fit`): the
    best validation mAP among global and each extractor's local and fusion, a tie keeping the cheaper. Cheapest
    first: ALIKED extracts ~5x slower than SIFT (bench/results/aliked_speed.json), more than fusion adds to SIFT's
    local. Returns the choice ("global", "local SIFT", ..., "fusion ALIKED") and the figures it chose by."""
    validation = {"global": fits["sift"]["validation"]["global"]["map"]}
    for kind in ("sift", "aliked"):
        for method in ("local", "fusion"):
            validation[f"{method} {EXTRACTOR_LABELS[kind]}"] = fits[kind]["validation"][method]["map"]
    order = list(validation)
    chosen = max(order, key=lambda candidate: (validation[candidate], -order.index(candidate)))
    return chosen, validation


def query_sample(everyone: int, at_most: int) -> np.ndarray:
    """The queries the pairwise references score: all, or a seeded sample of `at_most` (0: all)."""
    if at_most and everyone > at_most:
        return np.sort(np.random.default_rng(0).choice(everyone, size=at_most, replace=False))
    return np.arange(everyone)


def sampled_figures(scores: np.ndarray, queries, reference, sample: np.ndarray, leave_one_out: bool) -> dict:
    """Top-1 / mAP of the sampled queries' rows of `scores` (leave-one-out: a query's own image ignored); where
    the set records encounters, also without the photos of the query's own encounter (`across_sightings`)."""
    own_image = np.zeros((len(sample), len(reference)), dtype=bool)
    if leave_one_out:
        own_image[np.arange(len(sample)), sample] = True
    labels = queries.identities[sample], reference.identities
    entry = ranking_figures(scores, *labels, excluded=own_image)
    if queries.encounters is not None and known_groups(queries.encounters).any():
        groups = np.asarray(queries.encounters, dtype=object)[sample], np.asarray(reference.encounters, dtype=object)
        same_encounter = ((groups[0][:, None] == groups[1][None, :]) & known_groups(groups[0])[:, None]
                          & known_groups(groups[1])[None, :])
        excluded = own_image | same_encounter
        answerable = int(((labels[0][:, None] == labels[1][None, :]) & ~excluded).any(axis=1).sum())
        entry["across_sightings"] = None if answerable == 0 else {
            **ranking_figures(scores, *labels, excluded=excluded), "n_queries": answerable}
    return entry


def pairwise(record: dict, queries, gallery, one_vs_many: np.ndarray, args) -> None:
    """Pairwise SIFT, on a seeded sample of `--pairwise-queries` queries where the set has more (its time
    extrapolated to all queries, and one-vs-many measured on the same sample for a like-for-like row)."""
    everyone = len(queries)
    sample = query_sample(everyone, args.pairwise_queries)
    chosen = np.zeros(everyone, dtype=bool)
    chosen[sample] = True
    reference = queries if gallery is None else gallery
    matcher = PairwiseLocalMethod(num_workers=args.workers).matcher
    tick = time.perf_counter()
    if gallery is None and len(sample) == everyone:
        scores = matcher.score_within(queries.local, num_workers=args.workers, progress=False)
    else:
        scores = matcher.score(queries.part(chosen).local, reference.local, num_workers=args.workers, progress=False)
    seconds = time.perf_counter() - tick

    def figures(matrix: np.ndarray) -> dict:
        return sampled_figures(matrix, queries, reference, sample, gallery is None)

    entry = {**figures(scores),  # rows: the sampled queries
             "queries_scored": len(sample), "seconds_measured": round(seconds, 1),
             "seconds": round(seconds * everyone / len(sample), 1)}
    if len(sample) < everyone:
        entry["one_vs_many_on_the_same_queries"] = {key: value for key, value in figures(one_vs_many[sample]).items()
                                                    if key != "across_sightings"}
    record["methods"]["SIFT pairwise"] = entry
    report("SIFT pairwise", entry, everyone)


def plain_recipe(record: dict, queries, gallery, args) -> None:
    """The plain SIFT recipe on the pairwise sample (`queries` / `gallery` carry its own features), its time
    extrapolated to all queries as pairwise SIFT's is."""
    everyone = len(queries)
    sample = query_sample(everyone, args.pairwise_queries)
    reference = queries if gallery is None else gallery
    own = sample if gallery is None else np.full(len(sample), -1)
    tick = time.perf_counter()
    scores = recipe_scores([queries.local[q] for q in sample], reference.local, own, args.workers)
    seconds = time.perf_counter() - tick
    entry = {**sampled_figures(scores, queries, reference, sample, gallery is None),
             "queries_scored": len(sample), "seconds_measured": round(seconds, 1),
             "seconds": round(seconds * everyone / len(sample), 1), "recipe": SETTINGS,
             "features": queries.extractor_config}
    record["methods"]["plain recipe"] = entry
    report("plain recipe", entry, everyone)


def report(label: str, entry: dict, everyone: int) -> None:
    print(f"  {'':13s} {label:22s} top-1 {100 * entry['top1']:5.1f}  mAP {100 * entry['map']:5.1f}  "
          f"{entry['seconds']:7.1f} s ({entry['queries_scored']} of {everyone} queries)", flush=True)
