"""Scoring methods: each turns a query set and a gallery set into a (Q, G) score matrix, higher = more
likely the same individual. Protocols (leave-one-out, closed-set) and user-facing paths ask every method
the same two questions, so a new method is one new class:

- `fit(validation)`: learn what the method learns (calibration, combination, choice) on a validation
  `ImageSet` of the same species, scored leave-one-out: always a training split, never the test queries.
  Returns the validation figures worth recording.
- `scores(queries, gallery)`: the (Q, G) matrix; `gallery=None` scores the queries against each other
  (leave-one-out), the diagonal `-inf`.

Methods: "global" (cosine of embeddings), "local-pairwise" (SIFT matching of every pair, MAGSAC inliers),
"local" (one-vs-many LNBNN retrieval, `one_vs_many`), "fusion" (global top-B union local top-B,
both scores computed for every candidate, calibrated and combined) and "auto" (per species, whichever of
global / local / fusion has the best validation mAP).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .image_set import ImageSet  # defined below both methods and fusion; importable from here as before
from .local_matcher import LocalMatcher
from .one_vs_many import OneVsManyMatcher
from .union_fusion import UnionFusion

METHOD_NAMES = ("global", "local", "local-pairwise", "fusion", "auto")
AUTO_CHOICES = ("global", "local", "fusion")


class ScoringMethod(ABC):
    """The interface every method implements (see the module docstring); `needs` names the inputs it uses."""

    name = ""
    needs: tuple[str, ...] = ()

    def fit(self, validation: ImageSet, exclude_same_encounter: bool = False) -> dict[str, Any]:
        """Learn from labelled validation images (a training split); with `exclude_same_encounter`, not from
        pairs of one encounter. Methods without anything to learn return {}."""
        return {}

    @abstractmethod
    def scores(self, queries: ImageSet, gallery: ImageSet | None = None) -> np.ndarray:
        """(Q, G) scores, higher = more likely the same individual; `gallery=None`: leave-one-out, diagonal -inf."""

    def check(self, *sets: ImageSet | None) -> None:
        for image_set in sets:
            for what in self.needs if image_set is not None else ():
                image_set.require(what, self.name)


class GlobalMethod(ScoringMethod):
    """Cosine similarity of the model's L2-normalised embeddings."""

    name, needs = "global", ("embeddings",)

    def scores(self, queries: ImageSet, gallery: ImageSet | None = None) -> np.ndarray:
        self.check(queries, gallery)
        reference = queries if gallery is None else gallery
        similarity = (queries.embeddings @ reference.embeddings.T).astype(np.float32)
        if gallery is None:
            np.fill_diagonal(similarity, -np.inf)
        return similarity


@dataclass
class PairwiseLocalMethod(ScoringMethod):
    """Every query x gallery pair matched (mutual ratio test, MAGSAC inliers): G matchings per query."""

    matcher: LocalMatcher = field(default_factory=LocalMatcher)
    num_workers: int | None = None
    name = "local-pairwise"
    needs = ("local",)

    def scores(self, queries: ImageSet, gallery: ImageSet | None = None) -> np.ndarray:
        self.check(queries, gallery)
        matcher = self.matcher.for_method(queries.extractor_config.get("method"))  # SIFT or ALIKED alike
        if gallery is None:
            return matcher.score_within(queries.local, num_workers=self.num_workers, progress=False)
        return matcher.score(queries.local, gallery.local, num_workers=self.num_workers, progress=False)


@dataclass
class OneVsManyLocalMethod(ScoringMethod):
    """HotSpotter's one-vs-many: one descriptor index of the gallery, LNBNN votes, top-B verified."""

    matcher: OneVsManyMatcher = field(default_factory=OneVsManyMatcher)
    num_workers: int | None = None
    name = "local"
    needs = ("local",)

    def scores(self, queries: ImageSet, gallery: ImageSet | None = None) -> np.ndarray:
        self.check(queries, gallery)
        reference = queries if gallery is None else gallery
        index = self.matcher.build_index(reference.local, reference.extractor_config)
        return self.matcher.score(queries.local, reference.local, index, leave_one_out=gallery is None,
                                  num_workers=self.num_workers, progress=False)


@dataclass
class FusionMethod(ScoringMethod):
    """Union fusion (`union_fusion.UnionFusion`), fitted on the validation set's leave-one-out pairs."""

    fusion: UnionFusion = field(default_factory=UnionFusion)
    name = "fusion"
    needs = ("embeddings", "local")

    def fit(self, validation: ImageSet, exclude_same_encounter: bool = False) -> dict[str, Any]:
        self.check(validation)
        return self.fusion.fit(validation, exclude_same_encounter)

    def scores(self, queries: ImageSet, gallery: ImageSet | None = None) -> np.ndarray:
        self.check(queries, gallery)
        return self.fusion.scores(queries, gallery)


@dataclass
class AutoMethod(ScoringMethod):
    """Per species, global, local or fusion: the one with the best validation mAP (ties: the cheaper).

    Fitting fusion on the validation set scores all three there, so the choice costs no extra matching.
    """

    fusion: UnionFusion = field(default_factory=UnionFusion)
    name = "auto"
    needs = ("embeddings", "local")
    choice: str | None = None

    def fit(self, validation: ImageSet, exclude_same_encounter: bool = False) -> dict[str, Any]:
        self.check(validation)
        return self.choose(self.fusion.fit(validation, exclude_same_encounter))

    def choose(self, figures: dict[str, Any]) -> dict[str, Any]:
        """Choose from the validation figures of a fitted fusion (`UnionFusion.fit`)."""
        by_method = figures["validation"]
        # Cheapest first: a tie keeps the method that costs less per query.
        self.choice = max(AUTO_CHOICES, key=lambda name: (by_method[name]["map"], -AUTO_CHOICES.index(name)))
        return {**figures, "choice": self.choice,
                "reason": f"best validation mAP ({100 * by_method[self.choice]['map']:.1f} %) of "
                          + ", ".join(f"{name} {100 * by_method[name]['map']:.1f}" for name in AUTO_CHOICES)}

    def scores(self, queries: ImageSet, gallery: ImageSet | None = None) -> np.ndarray:
        if self.choice is None:
            raise RuntimeError("AutoMethod.scores called before fit: the choice is made on validation data")
        self.check(queries, gallery)
        scores = self.fusion.scores_of(self.choice, queries, gallery)
        blind = queries.without_keypoints()
        if self.choice == "local" and blind.any():
            # No keypoints, no local evidence: these queries get the global ranking instead of a row of ties.
            scores[blind] = GlobalMethod().scores(queries, gallery)[blind]
        return scores


def build_method(name: str, *, shortlist: int = 20, num_workers: int | None = None) -> ScoringMethod:
    """A fresh method by name (methods that fit are fitted per species, so each species gets its own)."""
    if name == "global":
        return GlobalMethod()
    if name == "local-pairwise":
        return PairwiseLocalMethod(num_workers=num_workers)
    if name == "local":
        return OneVsManyLocalMethod(OneVsManyMatcher(shortlist=shortlist), num_workers=num_workers)
    if name == "fusion":
        return FusionMethod(UnionFusion(shortlist=shortlist, num_workers=num_workers))
    if name == "auto":
        return AutoMethod(UnionFusion(shortlist=shortlist, num_workers=num_workers))
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHOD_NAMES)}")
