"""Fusion over both shortlists: candidates = global top-B union local top-B.

WildFusion re-ranks only the global top-B, so a weak global model hides the local matcher's hits (on
closed-set lion, SIFT's best match lay inside the global top-30 for 23 % of queries). Here one-vs-many
local retrieval (`one_vs_many`) makes a local top-B cheap at any gallery size, so each query's
candidates are the union of both shortlists, and every candidate gets both scores computed, never imputed:
its cosine and its local score (LNBNN vote share plus verified MAGSAC inliers).

Both scores are calibrated into P(same individual) on validation pairs (isotonic) and combined by one of
- "mean": WildFusion's mean of the two calibrated probabilities;
- "logistic": a logistic regression on the two calibrated probabilities (learns how much each is worth);
chosen by validation mAP. Pairs outside the union score `sigmoid(cosine) - 2`, below every candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .calibration import Calibrator
from .image_set import ImageSet
from .local_matcher import LocalMatcher
from .one_vs_many import OneVsManyMatcher, local_scores, shortlist_by_score, voted
from .selection import leave_one_out_figures, same_group_pairs

COMBINERS = ("mean", "logistic")
TIE_BREAK_WEIGHT = 1e-3


@dataclass
class Components:
    """Everything the three methods need for one query x gallery problem, computed once."""

    cosine: np.ndarray  # (Q, G), -inf on the leave-one-out diagonal
    vote_share: np.ndarray  # (Q, G) LNBNN votes / the query's best, -inf on the diagonal
    local_top: np.ndarray  # (Q, B) local shortlist (-1 padding)
    union: np.ndarray  # (Q, <= 2B) global top-B union local top-B (-1 padding)
    inliers: np.ndarray  # (Q, G) verified inliers on the union, -inf elsewhere
    without_keypoints: np.ndarray  # (Q,) queries with no local feature: they get the global answer

    def mask(self, candidates: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.cosine.shape, dtype=bool)
        rows, cols = np.nonzero(candidates >= 0)
        mask[rows, candidates[rows, cols]] = True
        return mask

    def local(self) -> np.ndarray:
        """The local method's scores: only its own shortlist counts as verified."""
        return local_scores(self.vote_share, self.inliers, self.mask(self.local_top))

    def local_on_union(self) -> np.ndarray:
        return local_scores(self.vote_share, self.inliers, self.mask(self.union))


def union_candidates(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise union of two candidate lists (-1 = none), padded with -1."""
    both = np.concatenate([first, second], axis=1)
    rows = [np.unique(row[row >= 0]) for row in both]
    width = max((len(row) for row in rows), default=0)
    union = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        union[i, : len(row)] = row
    return union


class UnionFusion:
    """Calibrated fusion of global and local scores over the union of both shortlists."""

    def __init__(self, shortlist: int = 20, combiner: str | None = None, *, retrieval: OneVsManyMatcher | None = None,
                 num_workers: int | None = None):
        if combiner is not None and combiner not in COMBINERS:
            raise ValueError(f"unknown combiner {combiner!r}; choose one of {COMBINERS}")
        self.shortlist = int(shortlist)
        self.retrieval = retrieval or OneVsManyMatcher(shortlist=self.shortlist, verifier=LocalMatcher())
        self.num_workers = num_workers
        self.requested_combiner = combiner
        self.combiner: str | None = combiner
        self.global_calibrator, self.local_calibrator = Calibrator("isotonic"), Calibrator("isotonic")
        self.logistic: dict[str, float] | None = None

    # ---- the shared computation -----------------------------------------------------------------------

    def components(self, queries: "ImageSet", gallery: "ImageSet | None", votes: np.ndarray | None = None) -> Components:
        """votes: the queries' (Q, G) LNBNN votes for the gallery's images when a saved descriptor index gave
        them (a gallery's); else an index of the gallery is built here."""
        reference = queries if gallery is None else gallery
        leave_one_out = gallery is None
        cosine = (queries.embeddings @ reference.embeddings.T).astype(np.float32)
        if votes is None:
            index = self.retrieval.build_index(reference.local, reference.extractor_config)
            votes = self.retrieval.votes(queries.local, index, leave_one_out=leave_one_out, progress=False)
        share = (votes / np.maximum(votes.max(axis=1, keepdims=True), 1e-12)).astype(np.float32)
        if leave_one_out:
            np.fill_diagonal(cosine, -np.inf)
            np.fill_diagonal(share, -np.inf)
        local_top = shortlist_by_score(voted(share, votes), self.shortlist)
        union = union_candidates(shortlist_by_score(cosine, self.shortlist), local_top)
        inliers = self.retrieval.verifier_for(reference.extractor_config).score(
            queries.local, reference.local, union, num_workers=self.num_workers,
            progress=False)
        without_keypoints = np.array([len(features) == 0 for features in queries.local], dtype=bool)
        return Components(cosine, share, local_top, union, inliers, without_keypoints)

    # ---- fitting --------------------------------------------------------------------------------------

    def fit(self, validation: "ImageSet", exclude_same_encounter: bool = False) -> dict[str, Any]:
        """Calibrate on the validation set's leave-one-out union pairs, choose the combiner by validation
        mAP, and report every method's validation figures (for `auto`). With `exclude_same_encounter`, pairs
        of one encounter (`validation.encounters`) are left out of the calibration and of the figures, so
        fusion learns what its scores mean across sightings, where a shared background does not help."""
        parts = self.components(validation, None)
        mask = parts.mask(parts.union)
        groups = validation.encounters if exclude_same_encounter else None
        if groups is not None:
            mask &= ~same_group_pairs(groups)
        labels = np.asarray(validation.identities)
        is_match = (labels[:, None] == labels[None, :])[mask]
        if groups is not None and not is_match.any():
            raise ValueError("excluding same-encounter pairs leaves the validation set no two images of one individual "
                             "from different encounters to fit on: add re-sightings or fit without the exclusion")
        local_union = parts.local_on_union()
        self.global_calibrator.fit(parts.cosine[mask], is_match)
        self.local_calibrator.fit(local_union[mask], is_match)
        probabilities = np.stack([self.global_calibrator.predict(parts.cosine[mask]),
                                  self.local_calibrator.predict(local_union[mask])], axis=1)
        self.logistic = _fit_logistic(probabilities, is_match)

        def measured(scores: np.ndarray) -> dict[str, float]:
            return leave_one_out_figures(scores, labels, groups)

        by_combiner = {}
        for name in COMBINERS:
            self.combiner = name
            by_combiner[name] = measured(self._fused(parts))
        self.combiner = self.requested_combiner or max(COMBINERS, key=lambda name: by_combiner[name]["map"])
        return {
            "validation": {"global": measured(parts.cosine), "local": measured(parts.local()),
                           "fusion": by_combiner[self.combiner]},
            "combiner": self.combiner, "combiners": by_combiner, "validation_queries": len(labels),
            "validation_pairs": int(mask.sum()), "shortlist": self.shortlist,
            "exclude_same_encounter": groups is not None,
        }

    # ---- scoring --------------------------------------------------------------------------------------

    def combine(self, cosine: np.ndarray, local: np.ndarray) -> np.ndarray:
        probabilities = np.stack([self.global_calibrator.predict(cosine), self.local_calibrator.predict(local)], -1)
        if self.combiner == "mean":
            return probabilities.mean(axis=-1)
        weights = self.logistic
        logits = weights["global"] * probabilities[..., 0] + weights["local"] * probabilities[..., 1] + weights["bias"]
        return 1.0 / (1.0 + np.exp(-logits))

    def _fused(self, parts: Components) -> np.ndarray:
        mask = parts.mask(parts.union)
        local = parts.local_on_union()
        with np.errstate(over="ignore"):
            fused = 1.0 / (1.0 + np.exp(-parts.cosine.astype(np.float64))) - 2.0
        # Isotonic steps tie many candidates: order ties by the raw local, then the raw global score.
        tie_break = _lexicographic_rank01(np.where(mask, local, -np.inf), parts.cosine)
        fused[mask] = (1 - TIE_BREAK_WEIGHT) * self.combine(parts.cosine[mask], local[mask]) + \
            TIE_BREAK_WEIGHT * tie_break[mask]
        # No keypoints, no local evidence: such a query's candidates (its global top-B) keep the calibrated
        # global probability alone instead of being averaged with an uninformative local one.
        global_only = mask & parts.without_keypoints[:, None]
        fused[global_only] = (1 - TIE_BREAK_WEIGHT) * self.global_calibrator.predict(parts.cosine[global_only]) + \
            TIE_BREAK_WEIGHT * _lexicographic_rank01(parts.cosine, parts.cosine)[global_only]
        fused[~np.isfinite(parts.cosine)] = -np.inf
        return fused.astype(np.float32)

    def scores(self, queries: "ImageSet", gallery: "ImageSet | None" = None, votes: np.ndarray | None = None
               ) -> np.ndarray:
        if self.combiner is None or not self.global_calibrator.is_fitted:
            raise RuntimeError("UnionFusion.scores called before fit")
        return self._fused(self.components(queries, gallery, votes))

    def scores_of(self, method: str, queries: "ImageSet", gallery: "ImageSet | None" = None) -> np.ndarray:
        """Scores of `method` ("global", "local" or "fusion"), computing only what it needs."""
        if method == "global":
            reference = queries if gallery is None else gallery
            cosine = (queries.embeddings @ reference.embeddings.T).astype(np.float32)
            if gallery is None:
                np.fill_diagonal(cosine, -np.inf)
            return cosine
        if method == "local":
            reference = queries if gallery is None else gallery
            index = self.retrieval.build_index(reference.local, reference.extractor_config)
            return self.retrieval.score(queries.local, reference.local, index, leave_one_out=gallery is None,
                                        num_workers=self.num_workers, progress=False)
        if method == "fusion":
            return self.scores(queries, gallery)
        raise ValueError(f"unknown method {method!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"shortlist": self.shortlist, "combiner": self.combiner, "logistic": self.logistic,
                "global_calibrator": self.global_calibrator.to_dict(), "local_calibrator": self.local_calibrator.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> "UnionFusion":
        fusion = cls(shortlist=int(data["shortlist"]), combiner=data["combiner"], **kwargs)
        fusion.logistic = data.get("logistic")
        fusion.global_calibrator = Calibrator.from_dict(data["global_calibrator"])
        fusion.local_calibrator = Calibrator.from_dict(data["local_calibrator"])
        return fusion


def _fit_logistic(features: np.ndarray, is_match: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0).fit(features, is_match)
    weight_global, weight_local = (float(w) for w in model.coef_[0])
    return {"global": weight_global, "local": weight_local, "bias": float(model.intercept_[0])}


def _lexicographic_rank01(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Each entry's rank within its row by `primary`, ties broken by `secondary`, scaled to [0, 1]."""
    order = np.lexsort((secondary, primary), axis=1)
    ranks = np.empty(primary.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(primary.shape[1], dtype=np.float64), primary.shape), axis=1)
    return ranks / max(primary.shape[1] - 1, 1)
