"""Calibration: monotone, persisted as JSON, clear errors; validation pairs from a similarity matrix."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wildreid.matching import Calibrator, similarity_pairs


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
