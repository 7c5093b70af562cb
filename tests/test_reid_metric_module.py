"""The `evaluate` metric module returns exactly what wildreid.evaluation computes."""
from __future__ import annotations

import numpy as np
import pytest

from wildreid.evaluation import open_set_metrics, retrieval_metrics, retrieval_metrics_from_similarity, top1_matches
from wildreid.evaluation.hf_evaluate import load_reid_metric


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((50, 8)).astype(np.float32)
    labels = [f"id{i}" for i in rng.integers(0, 12, 50)]
    return embeddings, labels


def test_leave_one_out_and_query_vs_gallery_match_the_library(data):
    embeddings, labels = data
    reid = load_reid_metric()
    assert reid.compute(predictions=embeddings.tolist(), references=labels) == retrieval_metrics(embeddings, labels)
    result = reid.compute(
        predictions=embeddings[:20],
        references=labels[:20],
        gallery_embeddings=embeddings[20:],
        gallery_labels=labels[20:],
    )
    assert result == retrieval_metrics(embeddings[:20], labels[:20], embeddings[20:], labels[20:])


def test_open_set_scores_with_a_threshold(data):
    embeddings, labels = data
    result = load_reid_metric().compute(
        predictions=embeddings[:20],
        references=labels[:20],
        gallery_embeddings=embeddings[20:],
        gallery_labels=labels[20:],
        new_individual_threshold=0.3,
    )
    expected = open_set_metrics(top1_matches(embeddings[:20], labels[:20], embeddings[20:], labels[20:]), 0.3)
    assert {k: result[k] for k in expected} == expected


def test_similarity_config_with_integer_labels():
    similarity = np.array([[0.9, 0.8, 0.3], [0.1, 0.7, 0.6]])
    result = load_reid_metric("similarity").compute(predictions=similarity, references=[1, 2], gallery_labels=[1, 2, 1])
    assert result == retrieval_metrics_from_similarity(similarity, [1, 2], [1, 2, 1])
    assert result["top1"] == 1.0


def test_empty_input_and_bad_config_fail_clearly():
    with pytest.raises(ValueError, match="nothing to evaluate"):
        load_reid_metric().compute(predictions=[], references=[])
    with pytest.raises(ValueError, match="unknown config 'cosine'"):
        load_reid_metric("cosine")
