"""faiss search: exact equals brute force, approximate recall on clustered data, input checks."""
from __future__ import annotations

import numpy as np
import pytest

from wildreid.identification.search import EmbeddingIndex, build_index, exact_search, l2_normalize, recall_at_k


def clustered(num: int, dim: int, clusters: int, seed: int, spread: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `clusters` random centres (like images around individuals) + queries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    data = centres[rng.integers(0, clusters, num)] + spread * rng.standard_normal((num, dim)).astype(np.float32)
    queries = centres[rng.integers(0, clusters, 200)] + spread * rng.standard_normal((200, dim)).astype(np.float32)
    return l2_normalize(data), l2_normalize(queries)


def test_exact_search_equals_brute_force():
    rng = np.random.default_rng(0)
    gallery = l2_normalize(rng.standard_normal((3000, 48)))
    queries = l2_normalize(rng.standard_normal((50, 48)))
    scores, ids = exact_search(gallery, queries, k=10)
    brute = queries @ gallery.T
    expected = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, axis=1), rtol=1e-5, atol=1e-5)


def test_auto_kind_switches_to_approximate_above_threshold():
    data, _ = clustered(2000, 16, 20, seed=1)
    assert build_index(data, approximate_threshold=5000).kind == "flat"
    index = build_index(data, approximate_threshold=1000)
    assert index.kind == "ivf" and index.is_approximate and index.ntotal == 2000
    assert build_index(data, approximate_threshold=1000, approximate_kind="hnsw").kind == "hnsw"


@pytest.mark.parametrize("kind, knob, value", [("ivf", "nprobe", 16), ("hnsw", "ef_search", 64)])
def test_approximate_recall_is_high_on_clustered_data(kind, knob, value):
    data, queries = clustered(20000, 32, 300, seed=2)
    _, exact_ids = exact_search(data, queries, k=10)
    index = build_index(data, kind=kind)
    setattr(index, knob, 1)
    low = recall_at_k(index.search(queries, 10)[1], exact_ids)
    setattr(index, knob, value)
    high = recall_at_k(index.search(queries, 10)[1], exact_ids)
    assert high >= 0.9 and high > low, (low, high)


def test_float16_storage_is_nearly_exact():
    data, queries = clustered(3000, 64, 50, seed=3)
    _, exact_ids = exact_search(data, queries, k=10)
    scores, ids = build_index(data, kind="flat", storage="float16").search(queries, 10)
    assert recall_at_k(ids, exact_ids) > 0.97
    assert scores.dtype == np.float32


def test_recall_at_k_counts_overlap():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[4, 3, 9, -1], [9, 9, 9, 9]]), exact) == 0.25
    assert recall_at_k(np.array([[1, 9], [9, 9]]), exact, k=2) == 0.25
    with pytest.raises(ValueError, match="exceeds"):
        recall_at_k(exact, exact, k=5)


def test_bad_inputs_are_refused_clearly():
    index = EmbeddingIndex(8)
    with pytest.raises(ValueError, match="shape \\(N, 8\\)"):
        index.add(np.ones((3, 9), np.float32))
    with pytest.raises(ValueError, match="row 1 has norm 2.0000"):
        index.add(np.vstack([l2_normalize(np.ones((1, 8))), 2 * l2_normalize(np.ones((1, 8)))]))
    with pytest.raises(ValueError, match="row 0 holds NaN"):
        index.add(np.full((1, 8), np.nan, np.float32))
    with pytest.raises(RuntimeError, match="trained"):
        EmbeddingIndex(8, "ivf", nlist=4).add(l2_normalize(np.ones((2, 8))))
    with pytest.raises(ValueError, match="nprobe applies to IVF"):
        index.nprobe = 4
    index.add(l2_normalize(np.eye(8)[:3]))
    scores, ids = index.search(l2_normalize(np.eye(8)[:1]), k=10)  # k above ntotal is clipped
    assert ids.shape == (1, 3) and ids[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0)
