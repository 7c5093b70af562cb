"""Open-set re-identification metrics: is a query a known individual or a new one?

BAKS / BAUS (balanced accuracy on known / unknown samples, as in wildlife-datasets and AnimalCLEF),
AUROC of the "new individual" decision, and the threshold choice that must be fitted on validation data.
The per-query input (`Top1Matches`) comes from `wildreid.evaluation.metrics.top1_matches`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class Top1Matches:
    """Per-query nearest-neighbour outcome, the input of the open-set metrics.

    Attributes:
        top_scores: (Q,) best gallery score of each query.
        top1_correct: (Q,) whether the top-1 gallery item has the query's identity (ties pessimistic).
        is_known: (Q,) whether the query's identity occurs in the gallery at all.
        query_labels: (Q,) the query identities.
    """

    top_scores: np.ndarray
    top1_correct: np.ndarray
    is_known: np.ndarray
    query_labels: np.ndarray



def _identity_weights(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Weight 1 / (n identities * n queries of the identity) on masked queries, 0 elsewhere.

    Summing weights of the queries a rule gets right gives the balanced (per-identity) accuracy.
    """
    weights = np.zeros(len(labels))
    if mask.any():
        _, inverse, counts = np.unique(labels[mask], return_inverse=True, return_counts=True)
        weights[mask] = 1.0 / (len(counts) * counts[inverse.reshape(-1)])
    return weights


def _auroc_new(top_scores: np.ndarray, is_known: np.ndarray) -> float | None:
    """AUROC of "new individual" = low top score: P(new scores below known) + 0.5 P(tie)."""
    if is_known.all() or not is_known.any():
        return None
    return float(roc_auc_score(~is_known, -top_scores))


def open_set_metrics(matches: Top1Matches, threshold: float) -> dict:
    """Open-set scores for a fixed "new individual" threshold (fit it on validation data).

    A query is predicted "new" when its top score is below ``threshold``, otherwise it is given its
    top-1 gallery identity. Following wildlife-datasets / AnimalCLEF:

    * ``baks``: balanced accuracy on known samples, the mean over identities present in the gallery
      of the fraction of their queries predicted as the right identity (top-1 correct and top score
      >= threshold).
    * ``baus``: balanced accuracy on unknown samples, the mean over identities absent from the
      gallery of the fraction of their queries predicted "new".
    * ``baks_baus_gmean``: sqrt(baks * baus), AnimalCLEF's final score.
    * ``auroc_new``: threshold-free AUROC of the "new individual" decision (positives = unknown
      queries, ranked by low top score; ties count one half).

    Values that are undefined (e.g. BAUS without unknown queries) are None, so the dict stays JSON.
    """
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    scores = np.asarray(matches.top_scores, dtype=np.float64)
    known = np.asarray(matches.is_known, dtype=bool)
    correct = np.asarray(matches.top1_correct, dtype=bool)
    labels = np.asarray(matches.query_labels)
    if len(scores) == 0:
        raise ValueError("no queries to evaluate")
    predicted_known = scores >= threshold
    baks = float(_identity_weights(labels, known)[known & correct & predicted_known].sum()) if known.any() else None
    baus = float(_identity_weights(labels, ~known)[~known & ~predicted_known].sum()) if (~known).any() else None
    return {
        "baks": baks,
        "baus": baus,
        "baks_baus_gmean": math.sqrt(baks * baus) if baks is not None and baus is not None else None,
        "auroc_new": _auroc_new(scores, known),
        "threshold": threshold,
        "n_known_queries": int(known.sum()),
        "n_unknown_queries": int((~known).sum()),
        "n_known_identities": int(len(np.unique(labels[known]))),
        "n_unknown_identities": int(len(np.unique(labels[~known]))),
    }


def choose_new_individual_threshold(matches: Top1Matches, criterion: str = "gmean") -> float:
    """Pick the "new individual" threshold that maximises ``criterion`` on VALIDATION matches.

    Fit it on a validation split and pass the result to :func:`open_set_metrics` on the test split;
    fitting on the test split would report an optimistic score that no user could reproduce.

    Criteria:
        ``"gmean"``: sqrt(BAKS * BAUS), the score reported by :func:`open_set_metrics`.
        ``"balanced"``: mean of the known-query and unknown-query recalls of the known/new decision
            alone (ignores whether the top-1 identity is right).

    Candidates are the lowest score (all known), midpoints between consecutive distinct scores, and
    just above the highest score (all new); the lowest best candidate wins ties.
    """
    scores = np.asarray(matches.top_scores, dtype=np.float64)
    known = np.asarray(matches.is_known, dtype=bool)
    if not known.any() or known.all():
        raise ValueError(
            "choosing a new-individual threshold needs validation queries of both known and unknown identities, "
            f"got {int(known.sum())} known and {int((~known).sum())} unknown"
        )
    distinct = np.unique(scores)
    candidates = np.concatenate(
        [distinct[:1], (distinct[:-1] + distinct[1:]) / 2, [np.nextafter(distinct[-1], np.inf)]]
    )
    if criterion == "gmean":
        labels = np.asarray(matches.query_labels)
        gain_known = _identity_weights(labels, known) * np.asarray(matches.top1_correct, dtype=bool)
        gain_new = _identity_weights(labels, ~known)
    elif criterion == "balanced":
        gain_known = known / known.sum()
        gain_new = ~known / (~known).sum()
    else:
        raise ValueError(f"unknown criterion {criterion!r}; choose 'gmean' or 'balanced'")
    order = np.argsort(scores)
    sorted_scores = scores[order]
    # Gains of the queries scoring below each candidate, i.e. predicted "new" by it.
    below = np.searchsorted(sorted_scores, candidates, side="left")
    cum_known = np.concatenate([[0.0], np.cumsum(gain_known[order])])
    cum_new = np.concatenate([[0.0], np.cumsum(gain_new[order])])
    known_score = cum_known[-1] - cum_known[below]
    new_score = cum_new[below]
    objective = np.sqrt(known_score * new_score) if criterion == "gmean" else (known_score + new_score) / 2
    return float(candidates[int(np.argmax(objective))])


# ----------------------------------------------------------------------------- grouping
