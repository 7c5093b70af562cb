"""The "new individual" decision of a gallery: known/unknown samples from labelled validation queries,
and the threshold on the best individual's score that separates them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..evaluation.open_set import Top1Matches, choose_new_individual_threshold

# Individuals per query used to fit the score calibrator: the candidates a user is shown.
CALIBRATION_TOP_K = 10


@dataclass
class OpenSetSamples:
    """One entry per sample (`top_scores`...`labels`) and one per ranked (query, individual) pair."""

    top_scores: list[float] = field(default_factory=list)
    top1_correct: list[bool] = field(default_factory=list)
    is_known: list[bool] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    pair_scores: list[float] = field(default_factory=list)
    pair_match: list[bool] = field(default_factory=list)

    def add(self, score: float, correct: bool, known: bool, label: str) -> None:
        self.top_scores.append(score)
        self.top1_correct.append(correct)
        self.is_known.append(known)
        self.labels.append(label)


def open_set_samples(labels: np.ndarray, exclude: Sequence[int | None], ranked: list[list[tuple[int, float, int]]],
                     codes: np.ndarray, code_of: dict[str, int], images_per_code: np.ndarray,
                     simulate_unknown: bool) -> OpenSetSamples:
    """Each query whose individual is in the gallery (its own image `exclude`d) gives a known sample, its
    best individual's score; a query of an absent individual an unknown one. With `simulate_unknown` a known
    query also gives an unknown sample: its best score among the other individuals."""
    samples = OpenSetSamples()
    for label, excluded, candidates in zip(labels, exclude, ranked):
        own = code_of.get(label)
        own_images = 0 if own is None else images_per_code[own] - (excluded is not None and codes[excluded] == own)
        if not candidates:
            continue
        known = own_images > 0
        samples.add(candidates[0][1], known and candidates[0][0] == own, known, label)
        if known and simulate_unknown:
            others = [score for code, score, _ in candidates if code != own]
            if others:
                samples.add(others[0], False, False, label)
        for code, score, _ in candidates:
            samples.pair_scores.append(score)
            samples.pair_match.append(code == own)
    return samples


def choose_threshold(samples: OpenSetSamples, criterion: str) -> float:
    matches = Top1Matches(np.array(samples.top_scores), np.array(samples.top1_correct, dtype=bool),
                          np.array(samples.is_known, dtype=bool), np.array(samples.labels))
    return float(choose_new_individual_threshold(matches, criterion))
