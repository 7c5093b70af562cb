"""Turning raw similarities (cosine, match counts) into match probabilities fitted on validation pairs.

Both calibrators are monotone non-decreasing by construction, so calibration never reorders a ranking:
isotonic regression is fitted with `increasing=True`, and the logistic slope is constrained to be
non-negative. A fitted calibrator is a handful of numbers saved as JSON (never pickle).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..records import RecordFormat

CALIBRATION_METHODS = ("isotonic", "logistic")
RECORD = RecordFormat("wildreid-calibrator", 1)


def similarity_pairs(
    similarity: np.ndarray,
    query_labels: Sequence[Any],
    gallery_labels: Sequence[Any],
    *,
    leave_one_out: bool = False,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a (Q, G) similarity matrix into validation pairs: (scores, is_match).

    Unscored entries (non-finite, e.g. `-inf` outside a shortlist) are dropped, as is the diagonal with
    `leave_one_out` (queries are the gallery). `mask` (Q, G) bool keeps only the pairs marked True.
    """
    similarity = np.asarray(similarity)
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    if similarity.shape != (len(query_labels), len(gallery_labels)):
        raise ValueError(f"similarity has shape {similarity.shape}, but there are {len(query_labels)} query and "
                         f"{len(gallery_labels)} gallery labels")
    keep = np.isfinite(similarity)
    if leave_one_out:
        if similarity.shape[0] != similarity.shape[1]:
            raise ValueError(f"leave_one_out needs a square similarity matrix, got {similarity.shape}")
        np.fill_diagonal(keep, False)
    if mask is not None:
        if np.shape(mask) != similarity.shape:
            raise ValueError(f"mask has shape {np.shape(mask)}, expected {similarity.shape}")
        keep &= np.asarray(mask, dtype=bool)
    rows, cols = np.nonzero(keep)
    return similarity[rows, cols].astype(np.float64), query_labels[rows] == gallery_labels[cols]


class Calibrator:
    """Maps a raw similarity to P(same individual) fitted on validation pairs.

    method: "isotonic" (non-parametric, step-wise linear; needs a few hundred pairs) or "logistic"
    (two parameters, smooth, extrapolates; fine with few pairs).
    """

    def __init__(self, method: str = "isotonic"):
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
        self.method = method
        self.params: dict[str, Any] | None = None

    @property
    def is_fitted(self) -> bool:
        return self.params is not None

    def fit(self, scores: Sequence[float] | np.ndarray, is_match: Sequence[bool] | np.ndarray) -> "Calibrator":
        scores = np.asarray(scores, dtype=np.float64).ravel()
        is_match = np.asarray(is_match).ravel()
        if len(scores) != len(is_match):
            raise ValueError(f"{len(scores)} scores but {len(is_match)} match labels")
        if len(scores) == 0:
            raise ValueError("cannot calibrate on zero validation pairs")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"{int(np.sum(~np.isfinite(scores)))} of {len(scores)} validation scores are not finite; "
                             "drop unscored pairs first (see similarity_pairs)")
        is_match = is_match.astype(bool)
        positives = int(is_match.sum())
        if positives in (0, len(is_match)):
            kind = "matches" if positives else "non-matches"
            raise ValueError(f"cannot calibrate: all {len(is_match)} validation pairs are {kind}; both same-individual "
                             "and different-individual pairs are needed")
        fit = self._fit_isotonic if self.method == "isotonic" else self._fit_logistic
        self.params = fit(scores, is_match)
        self.params["num_pairs"], self.params["num_matches"] = len(scores), positives
        return self

    @staticmethod
    def _fit_isotonic(scores: np.ndarray, is_match: np.ndarray) -> dict[str, Any]:
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        model.fit(scores, is_match.astype(np.float64))
        return {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}

    @staticmethod
    def _fit_logistic(scores: np.ndarray, is_match: np.ndarray) -> dict[str, Any]:
        from sklearn.linear_model import LogisticRegression

        # Standardise so the default L2 penalty means the same for cosines and match counts.
        mean, std = scores.mean(), scores.std()
        std = std if std > 0 else 1.0
        model = LogisticRegression(C=1.0).fit(((scores - mean) / std)[:, None], is_match)
        coef, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
        if coef < 0:
            warnings.warn("validation scores decrease with the match rate; calibrating to the constant match rate "
                          "so the mapping stays non-decreasing", stacklevel=3)
            rate = is_match.mean()
            return {"slope": 0.0, "intercept": float(np.log(rate / (1 - rate)))}
        return {"slope": coef / std, "intercept": intercept - coef * mean / std}

    def predict(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """P(match) for each score (float64, same shape); -inf -> the lowest, +inf -> the highest value."""
        if self.params is None:
            raise RuntimeError("Calibrator.predict called before fit (or load)")
        scores = np.asarray(scores, dtype=np.float64)
        if np.isnan(scores).any():
            raise ValueError(f"{int(np.isnan(scores).sum())} scores are NaN")
        if self.method == "isotonic":
            return np.interp(scores, self.params["x"], self.params["y"])
        logits = self.params["slope"] * scores + self.params["intercept"] if self.params["slope"] > 0 else \
            np.full_like(scores, self.params["intercept"])
        return 1.0 / (1.0 + np.exp(-logits))

    def to_dict(self) -> dict[str, Any]:
        if self.params is None:
            raise RuntimeError("cannot serialise an unfitted Calibrator")
        return RECORD.tag(method=self.method, **self.params)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibrator":
        calibrator = cls(RECORD.check(data)["method"])
        keys = ("x", "y") if calibrator.method == "isotonic" else ("slope", "intercept")
        if missing := [key for key in keys if key not in data]:
            raise ValueError(f"{calibrator.method} calibrator record lacks {missing}")
        params = {key: data[key] for key in (*keys, "num_pairs", "num_matches") if key in data}
        if calibrator.method == "isotonic":
            x, y = np.asarray(params["x"], dtype=np.float64), np.asarray(params["y"], dtype=np.float64)
            if len(x) != len(y) or len(x) == 0 or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
                raise ValueError("isotonic calibrator needs equally long, non-decreasing x and y")
        elif float(params["slope"]) < 0:
            raise ValueError(f"logistic calibrator slope must be >= 0, got {params['slope']}")
        calibrator.params = params
        return calibrator

    def save(self, path: str | os.PathLike) -> Path:
        return RECORD.save(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibrator":
        return RECORD.load_as(path, cls.from_dict)
