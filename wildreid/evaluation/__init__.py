"""Evaluation: re-identification metrics, the Hugging Face `evaluate` bridge and plots."""
from .metrics import (
    DEFAULT_TOPK,
    Top1Matches,
    choose_new_individual_threshold,
    grouped_metrics,
    macro_average,
    open_set_metrics,
    retrieval_metrics,
    retrieval_metrics_from_similarity,
    top1_matches,
    top1_matches_from_similarity,
)

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
