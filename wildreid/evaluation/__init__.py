"""Evaluation: re-identification metrics (retrieval, open-set, per group), protocols, the Hugging Face
`evaluate` bridge, plots and the `evaluate.py` runner."""
from .grouping import grouped_metrics, macro_average
from .metrics import (
    DEFAULT_TOPK,
    retrieval_metrics,
    retrieval_metrics_from_similarity,
    top1_matches,
    top1_matches_from_similarity,
)
from .open_set import Top1Matches, choose_new_individual_threshold, open_set_metrics

__all__ = [
    "DEFAULT_TOPK",
    "Top1Matches",
    "choose_new_individual_threshold",
    "grouped_metrics",
    "macro_average",
    "open_set_metrics",
    "retrieval_metrics",
    "retrieval_metrics_from_similarity",
    "top1_matches",
    "top1_matches_from_similarity",
]
