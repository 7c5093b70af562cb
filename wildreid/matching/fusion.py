"""WildFusion-style fusion of a global (embedding) and a local (keypoint) similarity.

Each similarity is calibrated into P(same individual) on validation pairs; the fused score is the mean
of the two probabilities. Local matching is expensive, so it only runs on each query's global top-B
shortlist: fused scores of shortlisted pairs lie in [0, 1]; every other pair gets
`sigmoid(global) - 2`, in (-2, -1), so it keeps its global order and ranks below the whole shortlist.

Isotonic calibration is a step function, so many shortlisted pairs can share one fused probability
(measured on closed-set lion: 14 of 30 candidates tied at the top on average; the metrics count ties
against the model). A term of weight `TIE_BREAK_WEIGHT` orders such ties by the raw local score, then the
raw global one (the shortlist is already in global order; re-ranking it is what local matching is for),
and moves no score by more than that weight.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..records import RecordFormat
from .calibration import Calibrator

LocalScores = np.ndarray | Callable[[np.ndarray], np.ndarray]
TIE_BREAK_WEIGHT = 1e-3
RECORD = RecordFormat("wildreid-fusion", 1)


def top_candidates(similarity: np.ndarray, k: int, *, leave_one_out: bool = False) -> np.ndarray:
    """(Q, min(k, G')) gallery indices of each query's k highest similarities, best first.

    With `leave_one_out` (queries are the gallery) a query never shortlists itself.
    """
    similarity = np.array(similarity, dtype=np.float64)
    if np.isnan(similarity).any():
        raise ValueError(f"global similarity holds {int(np.isnan(similarity).sum())} NaN entries")
    if leave_one_out:
        if similarity.shape[0] != similarity.shape[1]:
            raise ValueError(f"leave_one_out needs a square similarity matrix, got {similarity.shape}")
        np.fill_diagonal(similarity, -np.inf)
    available = similarity.shape[1] - int(leave_one_out)
    k = max(0, min(int(k), available))
    if k == 0:
        return np.zeros((similarity.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(similarity, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def _shortlist_ranks(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Each (Q, B) candidate's rank within its query's shortlist by `primary`, then `secondary`, in [0, 1]."""
    width = primary.shape[1]
    ranks = np.zeros(primary.shape, dtype=np.float64)
    if width > 1:
        order = np.lexsort((secondary, primary), axis=1)
        np.put_along_axis(ranks, order, np.broadcast_to(np.arange(width) / (width - 1), order.shape), axis=1)
    return ranks


class FusionMatcher:
    """Calibrate, fuse and re-rank the global top-`shortlist` candidates with local matching.

    Args:
        global_calibrator / local_calibrator: unfitted calibrators choose the method for `fit`; fitted
            ones (e.g. loaded) let `rerank` run without `fit`. Default: isotonic for both.
        shortlist: B, the number of global candidates per query that get local matching.
    """

    def __init__(
        self,
        global_calibrator: Calibrator | None = None,
        local_calibrator: Calibrator | None = None,
        shortlist: int = 100,
    ):
        if shortlist < 1:
            raise ValueError(f"shortlist must be >= 1, got {shortlist}")
        self.global_calibrator = global_calibrator or Calibrator("isotonic")
        self.local_calibrator = local_calibrator or Calibrator("isotonic")
        self.shortlist = int(shortlist)

    def candidates(self, global_sim: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
        """The (Q, B) shortlist that local matching has to score."""
        return top_candidates(global_sim, self.shortlist, leave_one_out=leave_one_out)

    def _local_on_shortlist(self, local: LocalScores, candidates: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        local_sim = np.asarray(local(candidates) if callable(local) else local, dtype=np.float64)
        if local_sim.shape != shape:
            raise ValueError(f"local similarity has shape {local_sim.shape}, expected {shape}")
        values = np.take_along_axis(local_sim, candidates, axis=1)
        if not np.all(np.isfinite(values)):
            q, b = np.argwhere(~np.isfinite(values))[0]
            raise ValueError(f"local score missing for shortlisted pair (query {q}, gallery {candidates[q, b]}); "
                             "the local scorer must score every candidate it is given")
        return values

    def fit(
        self,
        val_global_sim: np.ndarray,
        val_local: LocalScores,
        query_labels: Sequence[Any],
        gallery_labels: Sequence[Any],
        *,
        leave_one_out: bool = False,
    ) -> "FusionMatcher":
        """Fit both calibrators on the validation pairs inside the global shortlist, the population
        the fused scores are used on.

        val_local: a (Q, G) local similarity, or a callable taking the (Q, B) candidate indices and
            returning a (Q, G) matrix scored at least there (e.g. a partial of `LocalMatcher.score`).
        """
        val_global_sim = np.asarray(val_global_sim, dtype=np.float64)
        query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
        if val_global_sim.shape != (len(query_labels), len(gallery_labels)):
            raise ValueError(f"val_global_sim has shape {val_global_sim.shape}, but there are {len(query_labels)} "
                             f"query and {len(gallery_labels)} gallery labels")
        candidates = self.candidates(val_global_sim, leave_one_out=leave_one_out)
        local_values = self._local_on_shortlist(val_local, candidates, val_global_sim.shape)
        global_values = np.take_along_axis(val_global_sim, candidates, axis=1)
        is_match = query_labels[:, None] == gallery_labels[candidates]
        finite = np.isfinite(global_values)
        self.global_calibrator.fit(global_values[finite], is_match[finite])
        self.local_calibrator.fit(local_values[finite], is_match[finite])
        return self

    def fuse(self, global_values: np.ndarray, local_values: np.ndarray) -> np.ndarray:
        """Mean of the calibrated probabilities (same shape as the inputs)."""
        return 0.5 * (self.global_calibrator.predict(global_values) + self.local_calibrator.predict(local_values))

    def rerank(self, global_sim: np.ndarray, local: LocalScores, *, leave_one_out: bool = False) -> np.ndarray:
        """(Q, G) float32 fused scores: in [0, 1] on each query's shortlist, below -1 elsewhere."""
        global_sim = np.asarray(global_sim, dtype=np.float64)
        candidates = self.candidates(global_sim, leave_one_out=leave_one_out)
        local_values = self._local_on_shortlist(local, candidates, global_sim.shape)
        with np.errstate(over="ignore"):  # exp overflow for very negative similarities -> 0, as intended
            fused = 1.0 / (1.0 + np.exp(-global_sim)) - 2.0
        global_values = np.take_along_axis(global_sim, candidates, axis=1)
        tie_break = _shortlist_ranks(local_values, global_values)
        shortlisted = (1.0 - TIE_BREAK_WEIGHT) * self.fuse(global_values, local_values) + TIE_BREAK_WEIGHT * tie_break
        np.put_along_axis(fused, candidates, shortlisted, axis=1)
        return fused.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return RECORD.tag(shortlist=self.shortlist, global_calibrator=self.global_calibrator.to_dict(),
                          local_calibrator=self.local_calibrator.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FusionMatcher":
        RECORD.check(data)
        return cls(Calibrator.from_dict(data["global_calibrator"]), Calibrator.from_dict(data["local_calibrator"]),
                   shortlist=int(data["shortlist"]))

    def save(self, path: str | os.PathLike) -> Path:
        return RECORD.save(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FusionMatcher":
        return RECORD.load_as(path, cls.from_dict)
