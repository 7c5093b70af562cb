"""Calibration (monotone, persisted as JSON, clear errors) and WildFusion-style fusion."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wildreid.matching import Calibrator, FusionMatcher, similarity_pairs, top_candidates


def noisy_pairs(seed: int, n: int = 2000):
    rng = np.random.default_rng(seed)
    is_match = rng.random(n) < 0.2
    scores = np.where(is_match, rng.normal(0.7, 0.15, n), rng.normal(0.3, 0.15, n))
    return scores, is_match


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_calibration_is_monotone_bounded_and_informative(method):
    scores, is_match = noisy_pairs(0)
    calibrator = Calibrator(method).fit(scores, is_match)
    grid = np.linspace(-1.0, 2.0, 5001)
    probabilities = calibrator.predict(grid)
    assert np.all(np.diff(probabilities) >= 0)
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    assert calibrator.predict([0.1])[0] < 0.1 < 0.9 < calibrator.predict([0.95])[0]
    assert calibrator.predict([-np.inf])[0] <= probabilities.min()
    # Calibrated: among pairs predicted ~p, about p are matches.
    held_out, held_match = noisy_pairs(1)
    predicted = calibrator.predict(held_out)
    band = (predicted > 0.3) & (predicted < 0.7)
    assert abs(held_match[band].mean() - predicted[band].mean()) < 0.1


def test_logistic_never_decreases_even_on_anti_correlated_scores():
    scores, is_match = noisy_pairs(2)
    with pytest.warns(UserWarning, match="non-decreasing"):
        calibrator = Calibrator("logistic").fit(-scores, is_match)
    probabilities = calibrator.predict(np.linspace(-2, 2, 101))
    assert np.all(np.diff(probabilities) >= 0)
    np.testing.assert_allclose(probabilities, is_match.mean())


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_calibrator_json_round_trip(tmp_path, method):
    scores, is_match = noisy_pairs(3)
    calibrator = Calibrator(method).fit(scores, is_match)
    path = calibrator.save(tmp_path / "calibrator.json")
    assert json.loads(path.read_text())["method"] == method
    np.testing.assert_array_equal(Calibrator.load(path).predict(scores), calibrator.predict(scores))


def test_calibration_rejects_degenerate_and_bad_input(tmp_path):
    with pytest.raises(ValueError, match="all 3 validation pairs are non-matches"):
        Calibrator().fit([0.1, 0.2, 0.3], [False, False, False])
    with pytest.raises(ValueError, match="all 2 validation pairs are matches"):
        Calibrator("logistic").fit([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="not finite"):
        Calibrator().fit([0.1, -np.inf], [True, False])
    with pytest.raises(ValueError, match="2 scores but 1"):
        Calibrator().fit([0.1, 0.2], [True])
    with pytest.raises(RuntimeError, match="before fit"):
        Calibrator().predict([0.5])
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibrator("platt")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "wildreid-calibrator", "version": 1, "method": "isotonic",
                               "x": [0, 1], "y": [0.9, 0.1]}))
    with pytest.raises(ValueError, match="bad.json.*non-decreasing"):
        Calibrator.load(bad)


def test_similarity_pairs_drops_unscored_and_self_pairs():
    sim = np.array([[1.0, 0.5, -np.inf], [0.5, 1.0, 0.2], [0.1, 0.3, 1.0]])
    scores, is_match = similarity_pairs(sim, ["a", "a", "b"], ["a", "a", "b"], leave_one_out=True)
    assert sorted(scores.tolist()) == [0.1, 0.2, 0.3, 0.5, 0.5]
    assert is_match.sum() == 2


def test_top_candidates_are_sorted_and_skip_self():
    sim = np.array([[9.0, 1.0, 3.0, 2.0], [1.0, 9.0, 5.0, 0.0]])
    assert top_candidates(sim, 2).tolist() == [[0, 2], [1, 2]]
    square = np.array([[9.0, 1.0, 3.0], [1.0, 9.0, 5.0], [4.0, 2.0, 9.0]])
    assert top_candidates(square, 5, leave_one_out=True).tolist() == [[2, 1], [2, 0], [0, 1]]


def constructed_case(seed: int, num_queries: int = 60, num_ids: int = 40):
    """Queries 0..n/2 are easy for global and hard for local; the rest the other way round. On hard
    queries the weaker signal is fooled by one impostor by a small margin."""
    rng = np.random.default_rng(seed)
    gallery_labels = np.arange(num_ids)
    query_labels = rng.integers(0, num_ids, num_queries)
    global_sim = rng.normal(0.3, 0.08, (num_queries, num_ids))
    local_sim = rng.poisson(8, (num_queries, num_ids)).astype(np.float64)
    rows = np.arange(num_queries)
    impostor = (query_labels + 1 + rng.integers(0, num_ids - 1, num_queries)) % num_ids
    global_easy = rows < num_queries // 2
    size = num_queries
    global_sim[rows, query_labels] = np.where(global_easy, rng.normal(0.85, 0.03, size), rng.normal(0.5, 0.03, size))
    fooled_global = global_sim[rows, query_labels] + 0.04
    global_sim[rows, impostor] = np.where(global_easy, global_sim[rows, impostor], fooled_global)
    local_sim[rows, query_labels] = np.where(global_easy, rng.integers(14, 18, size), rng.integers(60, 90, size))
    local_sim[rows, impostor] = np.where(global_easy, local_sim[rows, query_labels] + 3, local_sim[rows, impostor])
    return global_sim, local_sim, query_labels, gallery_labels


def top1(similarity, query_labels, gallery_labels) -> float:
    return float(np.mean(gallery_labels[np.argmax(similarity, axis=1)] == query_labels))


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_fusion_top1_never_below_the_better_input(method):
    val_global, val_local, val_q, val_g = constructed_case(seed=0, num_queries=400)
    fusion = FusionMatcher(Calibrator(method), Calibrator(method), shortlist=10)
    fusion.fit(val_global, val_local, val_q, val_g)
    global_sim, local_sim, query_labels, gallery_labels = constructed_case(seed=1)
    fused = fusion.rerank(global_sim, local_sim)
    scores = {name: top1(sim, query_labels, gallery_labels) for name, sim in
              (("global", global_sim), ("local", local_sim), ("fusion", fused))}
    assert scores["fusion"] >= max(scores["global"], scores["local"]), scores
    assert scores["fusion"] > 0.9 > max(scores["global"], scores["local"]), scores


def test_ties_of_step_calibrators_are_broken_by_the_raw_scores():
    # Calibrators that see only two score levels map every shortlisted pair to one of two probabilities;
    # the candidate with more inliers and a higher cosine on the same plateau must still come first.
    val_global = np.array([[0.9, 0.1], [0.1, 0.9]])
    val_local = np.array([[50.0, 0.0], [0.0, 50.0]])
    fusion = FusionMatcher(shortlist=4).fit(val_global, val_local, np.array([0, 1]), np.array([0, 1]))
    global_sim = np.array([[0.97, 0.95, 0.92, 0.2]])  # the match (index 2) is not the global favourite
    local_sim = np.array([[60.0, 60.0, 80.0, 0.0]])  # ... but has the most inliers; 0 and 1 tie on inliers
    fused = fusion.rerank(global_sim, local_sim)
    probabilities = fusion.fuse(global_sim, local_sim)
    assert probabilities[0, 0] == probabilities[0, 1] == probabilities[0, 2]  # tied after calibration
    assert np.argsort(-fused[0], kind="stable").tolist() == [2, 0, 1, 3]  # by inliers, then by cosine
    np.testing.assert_allclose(fused, probabilities, atol=1e-3)  # the tie-break moves no probability by more


def test_rerank_scores_only_the_shortlist_and_keeps_the_rest_below():
    global_sim, local_sim, query_labels, gallery_labels = constructed_case(seed=2, num_queries=300)
    fusion = FusionMatcher(shortlist=5).fit(global_sim, local_sim, query_labels, gallery_labels)
    requested = []

    def local_scorer(candidates):
        requested.append(candidates)
        out = np.full(global_sim.shape, -np.inf)
        np.put_along_axis(out, candidates, np.take_along_axis(local_sim, candidates, axis=1), axis=1)
        return out

    fused = fusion.rerank(global_sim, local_scorer)
    assert requested[0].shape == (300, 5)
    np.testing.assert_array_equal(requested[0], top_candidates(global_sim, 5))
    shortlisted = np.zeros(global_sim.shape, dtype=bool)
    np.put_along_axis(shortlisted, requested[0], True, axis=1)
    for row in range(len(fused)):
        assert fused[row, shortlisted[row]].min() > fused[row, ~shortlisted[row]].max()
        outside = np.flatnonzero(~shortlisted[row])
        assert np.all(np.diff(fused[row, outside][np.argsort(-global_sim[row, outside])]) <= 0)
    assert 0.0 <= fused[shortlisted].min() and fused[shortlisted].max() <= 1.0
    with pytest.raises(ValueError, match="local score missing"):
        fusion.rerank(global_sim, lambda candidates: np.full(global_sim.shape, -np.inf))


def test_fusion_json_round_trip_and_leave_one_out(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(30), 3)
    embeddings = rng.normal(size=(30, 16))[labels] + rng.normal(scale=0.8, size=(90, 16))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    global_sim = embeddings @ embeddings.T
    local_sim = (labels[:, None] == labels[None, :]) * rng.poisson(20, (90, 90)) + rng.poisson(5, (90, 90))
    fusion = FusionMatcher(shortlist=8).fit(global_sim, local_sim, labels, labels, leave_one_out=True)
    fused = fusion.rerank(global_sim, local_sim, leave_one_out=True)
    assert np.all(np.diag(fused) < -1)  # a query never shortlists itself
    loaded = FusionMatcher.load(fusion.save(tmp_path / "fusion.json"))
    np.testing.assert_array_equal(loaded.rerank(global_sim, local_sim, leave_one_out=True), fused)
