"""Re-id metrics against hand-computed cases and an independent brute-force ranking."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from wildreid.evaluation import (
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


def brute_force(similarity, query_labels, gallery_labels, leave_one_out=False):
    """Per query: sort candidates by (-score, correct) so tied incorrect items come first."""
    first_hits, aps, unmatched, skipped = [], [], 0, 0
    for i, row in enumerate(np.asarray(similarity, dtype=np.float64)):
        candidates = [
            (row[j], gallery_labels[j] == query_labels[i])
            for j in range(len(gallery_labels))
            if not (leave_one_out and j == i)
        ]
        ranked = [correct for _, correct in sorted(candidates, key=lambda c: (-c[0], c[1]))]
        if not any(ranked):
            skipped += leave_one_out
            unmatched += not leave_one_out
            if not leave_one_out:
                first_hits.append(None)
            continue
        first_hits.append(ranked.index(True))
        positions = [p for p, correct in enumerate(ranked) if correct]
        aps.append(np.mean([(n + 1) / (p + 1) for n, p in enumerate(positions)]))
    return first_hits, aps, unmatched, skipped


def assert_matches_brute_force(result, similarity, query_labels, gallery_labels, leave_one_out=False):
    first_hits, aps, unmatched, skipped = brute_force(similarity, query_labels, gallery_labels, leave_one_out)
    assert result["n_queries"] == len(first_hits)
    assert result["n_skipped"] == skipped and result["n_unmatched"] == unmatched
    assert result["map"] == pytest.approx(np.mean(aps), abs=1e-12)
    for k, value in enumerate(result["cmc"], start=1):
        assert value == pytest.approx(np.mean([h is not None and h < k for h in first_hits]), abs=1e-12)


# ----------------------------------------------------------------------------- hand-computed cases


def test_query_vs_gallery_hand_case():
    gallery_labels = ["A", "B", "A", "C"]
    similarity = np.array(
        [
            [0.9, 0.8, 0.3, 0.1],  # query A: A B A C -> first hit rank 1; AP = (1/1 + 2/3) / 2 = 5/6
            [0.7, 0.2, 0.6, 0.5],  # query B: A A C B -> first hit rank 4; AP = 1/4
            [0.1, 0.2, 0.3, 0.4],  # query C: C first -> rank 1; AP = 1
        ]
    )
    result = retrieval_metrics_from_similarity(similarity, ["A", "B", "C"], gallery_labels, topk=(1, 2, 5))
    assert result["top1"] == pytest.approx(2 / 3)
    assert result["top2"] == pytest.approx(2 / 3)
    assert result["top5"] == 1.0  # k beyond the 4-item gallery reports the full-gallery CMC value
    assert result["cmc"] == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1.0])  # capped at the gallery size
    assert result["map"] == pytest.approx((5 / 6 + 1 / 4 + 1) / 3)  # = 25/36
    assert (result["n_queries"], result["n_identities"], result["n_gallery"]) == (3, 3, 4)
    assert (result["n_skipped"], result["n_unmatched"]) == (0, 0)


def test_leave_one_out_hand_case_from_embeddings():
    # Unit vectors at these angles (degrees); cosine = cos(angle difference). C is a singleton.
    angles = [0, 60, 20, 200, 100]
    labels = ["A", "A", "B", "B", "C"]
    # Different norms per row: the metric must re-normalise.
    scale = np.array([[1.0], [3.0], [0.5], [2.0], [7.0]])
    embeddings = scale * np.stack([np.cos(np.radians(angles)), np.sin(np.radians(angles))], axis=1)
    # A@0  : B@20 (.94), A@60 (.50), C@100 (-.17), B@200 (-.94) -> first hit 2, AP 1/2
    # A@60 : B@20 / C@100 (.77, tie of two wrong items), A@0 (.50), B@200 -> first hit 3, AP 1/3
    # B@20 : A@0 (.94), A@60 (.77), C@100 (.17), B@200 (-1) -> first hit 4, AP 1/4
    # B@200: C@100 (-.17), A@60 (-.77), A@0 (-.94), B@20 (-1) -> first hit 4, AP 1/4
    # C@100: no other C -> skipped, as MiewID does
    result = retrieval_metrics(embeddings, labels)
    assert result["cmc"] == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert result["top1"] == 0.0 and result["top5"] == 1.0
    assert result["map"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 4) / 4)  # = 1/3
    assert (result["n_queries"], result["n_identities"], result["n_skipped"], result["n_gallery"]) == (4, 2, 1, 5)


def test_constant_scores_rank_at_chance_not_perfect():
    # Every pair scores the same; ties are pessimistic, so correct items rank after all wrong ones.
    labels = ["a", "a", "b", "b", "b"]
    # query a: 1 correct among 4 others -> first hit rank 4, AP 1/4
    # query b: 2 correct among 4 others -> ranks 3 and 4, AP (1/3 + 2/4) / 2 = 5/12
    result = retrieval_metrics_from_similarity(np.ones((5, 5)), labels, leave_one_out=True)
    assert result["cmc"] == pytest.approx([0.0, 0.0, 3 / 5, 1.0])
    assert result["map"] == pytest.approx((2 * 1 / 4 + 3 * 5 / 12) / 5)  # = 0.35
    same = retrieval_metrics(np.ones((5, 8)), labels)  # identical embeddings: the same all-ties case
    assert same == result


@pytest.mark.parametrize(
    ("scores", "expected_first_hit", "expected_ap"),
    [
        # correct A tied with wrong B at the top: B goes first -> first hit rank 2, AP (1/2 + 2/3) / 2
        ([0.5, 0.5, 0.1], 2, (1 / 2 + 2 / 3) / 2),
        # two correct items tied with each other below a wrong one: order among them is irrelevant
        ([0.5, 0.9, 0.5], 2, (1 / 2 + 2 / 3) / 2),
        # no ties: A first, the other A third
        ([0.9, 0.5, 0.1], 1, (1 + 2 / 3) / 2),
    ],
)
def test_ties_are_pessimistic(scores, expected_first_hit, expected_ap):
    result = retrieval_metrics_from_similarity(np.array([scores]), ["A"], ["A", "B", "A"], topk=(1, 2))
    assert result["top1"] == float(expected_first_hit <= 1)
    assert result["top2"] == float(expected_first_hit <= 2)
    assert result["map"] == pytest.approx(expected_ap)


def test_leave_one_out_self_is_excluded_even_when_scores_are_minus_inf():
    # Row 0's only other "a" scores -inf, like the excluded self; it must rank 2nd (after b), not 3rd.
    similarity = np.array([[5.0, -np.inf, 0.2], [-np.inf, 5.0, 0.3], [0.2, 0.3, 5.0]])
    result = retrieval_metrics_from_similarity(similarity, ["a", "a", "b"], leave_one_out=True)
    # queries 0 and 1: first hit rank 2, AP 1/2; query 2 (b) is a singleton -> skipped
    assert result["cmc"] == pytest.approx([0.0, 1.0])
    assert result["map"] == pytest.approx(0.5)
    assert result["n_skipped"] == 1


def test_query_vs_gallery_unmatched_queries_are_cmc_misses_and_left_out_of_map():
    similarity = np.array([[0.9, 0.1], [0.8, 0.7]])  # query A matches; query Z's identity is not in the gallery
    result = retrieval_metrics_from_similarity(similarity, ["A", "Z"], ["A", "B"])
    assert result["top1"] == 0.5  # Z counts as a miss
    assert result["map"] == 1.0  # but AP is only averaged over A
    assert (result["n_queries"], result["n_unmatched"], result["n_skipped"]) == (2, 1, 0)


def test_integer_labels_and_numpy_object_labels_work():
    similarity = np.array([[0.9, 0.1], [0.2, 0.8]])
    by_int = retrieval_metrics_from_similarity(similarity, [3, 4], np.array([3, 4]))
    by_object = retrieval_metrics_from_similarity(similarity, np.array(["x", "y"], dtype=object), ["x", "y"])
    assert by_int == by_object and by_int["top1"] == 1.0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: retrieval_metrics(np.zeros((0, 4)), []), "empty"),
        (lambda: retrieval_metrics(np.eye(2), ["a", "b"], np.zeros((0, 2)), []), "empty"),
        (lambda: retrieval_metrics_from_similarity(np.zeros((0, 3)), [], ["a", "b", "c"]), "empty"),
        (lambda: retrieval_metrics(np.eye(3), ["a", "b", "c"]), "identities with >= 2 images"),
        (lambda: retrieval_metrics(np.eye(2), ["a", "b"], np.eye(2), ["c", "d"]), "no query identity occurs"),
        (lambda: retrieval_metrics(np.eye(2), ["a", "a", "b"]), "2 rows but query_labels has 3"),
        (lambda: retrieval_metrics(np.eye(2), [1, 1], np.eye(2), ["1", "2"]), "int but gallery labels are str"),
        (lambda: retrieval_metrics(np.array([[1.0, 0], [0, 0]]), ["a", "a"]), "row 1 is all zeros"),
        (lambda: retrieval_metrics(np.array([[1.0, np.nan], [0, 1]]), ["a", "a"]), "row 0 holds NaN"),
        (lambda: retrieval_metrics(np.eye(2), ["a", "a"], np.eye(3), ["a", "b", "c"]), "2-d but gallery"),
        (lambda: retrieval_metrics(np.eye(2), ["a", "a"], topk=()), "topk"),
        (lambda: retrieval_metrics(np.eye(2), ["a", "a"], chunk_size=0), "chunk_size"),
        (lambda: retrieval_metrics_from_similarity(np.ones((2, 3)), ["a", "a"], ["a", "b"]), "shape (2, 3)"),
        (
            lambda: retrieval_metrics_from_similarity(np.array([[np.nan, 1.0]]), ["a"], ["a", "b"]),
            "similarity[0, 0] is NaN",
        ),
        (lambda: retrieval_metrics_from_similarity(np.ones((2, 2)), ["a", "a"]), "gallery_labels is required"),
    ],
)
def test_bad_input_fails_clearly(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


# ----------------------------------------------------------------------------- invariances


def tied_random_set(seed, n=60, n_ids=12):
    """+-1 embeddings in 16-d: normalised entries are +-0.25, so every cosine is an exact multiple of
    1/8 whatever the BLAS kernel; many scores tie exactly, which exercises the tie handling."""
    rng = np.random.default_rng(seed)
    embeddings = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(n, 16))
    embeddings[:, 8:] = embeddings[:, :1]  # fewer distinct scores, more ties
    labels = rng.integers(0, n_ids, size=n)
    return embeddings, labels


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_matches_brute_force_and_is_chunk_invariant(seed):
    embeddings, labels = tied_random_set(seed)
    reference = retrieval_metrics(embeddings, labels, chunk_size=10_000)
    for chunk_size in (1, 7, None):
        assert retrieval_metrics(embeddings, labels, chunk_size=chunk_size) == reference
    similarity = unit(embeddings) @ unit(embeddings).T
    assert_matches_brute_force(reference, similarity, labels, labels, leave_one_out=True)
    assert retrieval_metrics_from_similarity(similarity, labels, leave_one_out=True, chunk_size=3) == reference


@pytest.mark.parametrize("seed", [2, 3])
def test_query_vs_gallery_matches_brute_force_and_is_chunk_invariant(seed):
    embeddings, labels = tied_random_set(seed, n=80, n_ids=30)
    queries, gallery = embeddings[:30], embeddings[30:]
    query_labels, gallery_labels = labels[:30], labels[30:]
    reference = retrieval_metrics(queries, query_labels, gallery, gallery_labels, chunk_size=1)
    assert retrieval_metrics(queries, query_labels, gallery, gallery_labels, chunk_size=1000) == reference
    similarity = unit(queries) @ unit(gallery).T
    assert_matches_brute_force(reference, similarity, query_labels, gallery_labels)
    assert retrieval_metrics_from_similarity(similarity, query_labels, gallery_labels, chunk_size=4) == reference


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_few_identities_many_images_and_infinite_scores_match_brute_force(leave_one_out):
    # ~70 correct items per query stress the per-row search; +-inf scores are allowed in score matrices.
    rng = np.random.default_rng(8)
    n_gallery = 40 if leave_one_out else 200
    similarity = rng.standard_normal((40, n_gallery)).round(1)  # rounding adds ties
    similarity[rng.random(similarity.shape) < 0.05] = -np.inf
    similarity[rng.random(similarity.shape) < 0.02] = np.inf
    query_labels = rng.integers(0, 3, 40)
    gallery_labels = query_labels if leave_one_out else rng.integers(0, 3, n_gallery)
    result = retrieval_metrics_from_similarity(
        similarity, query_labels, gallery_labels, leave_one_out=leave_one_out, chunk_size=6
    )
    assert_matches_brute_force(result, similarity, query_labels, gallery_labels, leave_one_out)


def test_leave_one_out_equals_each_query_against_the_others():
    embeddings, labels = tied_random_set(4, n=25, n_ids=6)
    loo = retrieval_metrics(embeddings, labels, topk=(1, 3))
    per_query = [
        retrieval_metrics(embeddings[[i]], labels[[i]], np.delete(embeddings, i, 0), np.delete(labels, i), topk=(1, 3))
        for i in range(len(labels))
        if (labels == labels[i]).sum() > 1
    ]
    assert loo["n_queries"] == len(per_query)
    assert loo["top1"] == pytest.approx(np.mean([r["top1"] for r in per_query]))
    assert loo["top3"] == pytest.approx(np.mean([r["top3"] for r in per_query]))
    assert loo["map"] == pytest.approx(np.mean([r["map"] for r in per_query]))


def test_average_precision_agrees_with_sklearn_without_ties():
    rng = np.random.default_rng(5)
    similarity = rng.standard_normal((12, 40))
    query_labels = rng.integers(0, 5, 12)
    gallery_labels = rng.integers(0, 5, 40)
    result = retrieval_metrics_from_similarity(similarity, query_labels, gallery_labels)
    expected = [
        average_precision_score(gallery_labels == q, s)
        for s, q in zip(similarity, query_labels)
        if (gallery_labels == q).any()
    ]
    assert result["map"] == pytest.approx(np.mean(expected), abs=1e-12)


# ----------------------------------------------------------------------------- open set


def hand_open_set_matches():
    # Gallery: A, B. Query identities X and Y are absent from it (unknown).
    similarity = np.array(
        [
            [0.9, 0.1],  # A: top-1 A (right), 0.9
            [0.2, 0.8],  # A: top-1 B (wrong), 0.8
            [0.1, 0.4],  # B: top-1 B (right), 0.4
            [0.3, 0.0],  # X: 0.3
            [0.1, 0.7],  # X: 0.7
            [0.2, 0.1],  # Y: 0.2
        ]
    )
    return top1_matches_from_similarity(similarity, ["A", "A", "B", "X", "X", "Y"], ["A", "B"])


def test_open_set_hand_case():
    matches = hand_open_set_matches()
    assert matches.top_scores.tolist() == pytest.approx([0.9, 0.8, 0.4, 0.3, 0.7, 0.2])
    assert matches.top1_correct.tolist()[:3] == [True, False, True]
    assert matches.is_known.tolist() == [True, True, True, False, False, False]
    result = open_set_metrics(matches, threshold=0.5)
    # BAKS: A -> q1 right and 0.9 >= 0.5, q2 wrong identity: 1/2; B -> right but 0.4 < 0.5 says "new": 0
    assert result["baks"] == pytest.approx((1 / 2 + 0) / 2)
    # BAUS: X -> 0.3 new, 0.7 not: 1/2; Y -> 0.2 new: 1
    assert result["baus"] == pytest.approx((1 / 2 + 1) / 2)
    assert result["baks_baus_gmean"] == pytest.approx(math.sqrt(0.25 * 0.75))
    # AUROC: new scores below known ones: 0.3 < all 3, 0.7 < 0.9 and 0.8, 0.2 < all 3 -> 8 of 9 pairs
    assert result["auroc_new"] == pytest.approx(8 / 9)
    assert (result["n_known_queries"], result["n_unknown_queries"]) == (3, 3)
    assert (result["n_known_identities"], result["n_unknown_identities"]) == (2, 2)


def test_open_set_embeddings_agree_with_similarity_and_sklearn_auroc():
    embeddings, labels = tied_random_set(6, n=70, n_ids=20)
    queries, gallery = embeddings[:35], embeddings[35:]
    from_embeddings = top1_matches(queries, labels[:35], gallery, labels[35:], chunk_size=4)
    from_similarity = top1_matches_from_similarity(unit(queries) @ unit(gallery).T, labels[:35], labels[35:])
    for field in ("top1_correct", "is_known"):
        assert np.array_equal(getattr(from_embeddings, field), getattr(from_similarity, field))
    assert np.allclose(from_embeddings.top_scores, from_similarity.top_scores, atol=1e-6)
    # top-1 correctness is the closed-set CMC top-1 over the known queries
    closed = retrieval_metrics(queries, labels[:35], gallery, labels[35:])
    assert from_embeddings.top1_correct.mean() == pytest.approx(closed["top1"])
    result = open_set_metrics(from_similarity, threshold=0.5)
    assert result["auroc_new"] == pytest.approx(roc_auc_score(~from_similarity.is_known, -from_similarity.top_scores))


def test_open_set_undefined_values_are_none():
    matches = Top1Matches(np.array([0.9, 0.2]), np.array([True, False]), np.array([True, True]), np.array(["a", "b"]))
    result = open_set_metrics(matches, threshold=0.5)
    assert result["baks"] == 0.5 and result["baus"] is None
    assert result["baks_baus_gmean"] is None and result["auroc_new"] is None


def test_threshold_fitted_on_validation_then_applied_to_test():
    validation = Top1Matches(
        top_scores=np.array([0.9, 0.8, 0.7, 0.4, 0.3]),
        top1_correct=np.array([True, True, True, False, False]),
        is_known=np.array([True, True, True, False, False]),
        query_labels=np.array(["a", "b", "c", "x", "y"]),
    )
    # Any threshold in (0.4, 0.7] separates known from new perfectly; the first best candidate is the
    # midpoint between 0.4 and 0.7.
    threshold = choose_new_individual_threshold(validation)
    assert threshold == pytest.approx(0.55)
    assert open_set_metrics(validation, threshold)["baks_baus_gmean"] == 1.0
    test = Top1Matches(
        top_scores=np.array([0.6, 0.5, 0.52, 0.1]),
        top1_correct=np.array([True, True, False, False]),
        is_known=np.array([True, True, False, False]),
        query_labels=np.array(["a", "b", "x", "y"]),
    )
    result = open_set_metrics(test, threshold)
    # a: 0.6 >= 0.55 right -> 1; b: 0.5 < 0.55 says new -> 0; BAKS 1/2. x, y both below -> BAUS 1.
    assert (result["baks"], result["baus"], result["threshold"]) == (0.5, 1.0, threshold)


def test_balanced_criterion_hand_case():
    matches = Top1Matches(
        top_scores=np.array([0.9, 0.6, 0.7, 0.2]),
        top1_correct=np.array([True, True, False, False]),
        is_known=np.array([True, True, False, False]),
        query_labels=np.array(["a", "b", "x", "y"]),
    )
    # Candidates 0.2, 0.4, 0.65, 0.75, 0.8, just above 0.9. Mean of known recall and new recall:
    # 0.2 -> (1 + 0)/2, 0.4 -> (1 + 1/2)/2 = 0.75, 0.65 -> (1/2 + 1/2)/2, 0.75 -> (1/2 + 1)/2 = 0.75, ...
    # 0.4 and 0.75 tie at 0.75; the lowest wins.
    assert choose_new_individual_threshold(matches, "balanced") == pytest.approx(0.4)


def test_threshold_needs_known_and_unknown_validation_queries():
    only_known = Top1Matches(np.array([0.9]), np.array([True]), np.array([True]), np.array(["a"]))
    with pytest.raises(ValueError, match="both known and unknown"):
        choose_new_individual_threshold(only_known)
    with pytest.raises(ValueError, match="unknown criterion"):
        choose_new_individual_threshold(hand_open_set_matches(), "f1")


# ----------------------------------------------------------------------------- grouping


def test_grouped_metrics_per_species_and_macro_average():
    embeddings, labels = tied_random_set(7, n=40, n_ids=8)
    species = np.where(np.arange(40) < 25, "lion", "nyala")
    labels = np.array([f"{s}/{l}" for s, l in zip(species, labels)])
    per_species = grouped_metrics(species, lambda i: retrieval_metrics(embeddings[i], labels[i]))
    assert list(per_species) == ["lion", "nyala"]
    assert per_species["nyala"] == retrieval_metrics(embeddings[25:], labels[25:])
    mean = macro_average(per_species)
    assert mean["top1"] == pytest.approx((per_species["lion"]["top1"] + per_species["nyala"]["top1"]) / 2)
    assert mean["n_queries"] == per_species["lion"]["n_queries"] + per_species["nyala"]["n_queries"]
    assert "cmc" not in mean


def test_grouped_metrics_names_the_failing_group_or_skips_it():
    embeddings = np.eye(4)
    labels = np.array(["a", "a", "b", "c"])
    viewpoint = ["left", "left", "right", "right"]  # "right" holds only singletons
    with pytest.raises(ValueError, match="group 'right'"):
        grouped_metrics(viewpoint, lambda i: retrieval_metrics(embeddings[i], labels[i]))
    kept = grouped_metrics(viewpoint, lambda i: retrieval_metrics(embeddings[i], labels[i]), skip_errors=True)
    assert list(kept) == ["left"]


def test_macro_average_skips_undefined_and_non_numeric_values():
    mean = macro_average(
        {
            "lion": {"top1": 0.2, "baus": None, "seen_in_training": True, "n_queries": 10, "threshold": 0.3},
            "dog": {"top1": 0.6, "baus": 0.5, "seen_in_training": False, "n_queries": 5, "threshold": 0.4},
        }
    )
    assert mean == {"top1": pytest.approx(0.4), "baus": 0.5, "n_queries": 15}


# ----------------------------------------------------------------------------- same-encounter exclusion


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_excluding_same_encounter_equals_each_query_without_its_encounter(leave_one_out):
    # Reference: each query scored alone against the gallery with its own encounter's items (and itself) removed.
    rng = np.random.default_rng(11)
    n_gallery = 36 if leave_one_out else 50
    similarity = rng.standard_normal((36, n_gallery)).round(1)  # ties
    similarity[rng.random(similarity.shape) < 0.05] = -np.inf
    query_labels = rng.integers(0, 5, 36)
    gallery_labels = query_labels if leave_one_out else rng.integers(0, 5, n_gallery)
    def encounters(labels, every):  # individual 4 was seen once (encounter "e4"): its queries have no answer
        return ["e4" if label == 4 else None if i % every == 0 else f"e{i % 6}" for i, label in enumerate(labels)]

    query_groups = encounters(query_labels, 7)
    gallery_groups = query_groups if leave_one_out else encounters(gallery_labels, 5)
    result = retrieval_metrics_from_similarity(similarity, query_labels, None if leave_one_out else gallery_labels,
                                               leave_one_out=leave_one_out, chunk_size=5, topk=(1, 3),
                                               query_groups=query_groups, gallery_groups=gallery_groups)
    first_hits, aps, skipped = [], [], 0
    for i in range(36):
        keep = [j for j in range(n_gallery) if not (leave_one_out and j == i)
                and not (query_groups[i] is not None and gallery_groups[j] == query_groups[i])]
        hits, ap, _, _ = brute_force(similarity[[i]][:, keep], query_labels[[i]], gallery_labels[keep])
        if hits[0] is None and (leave_one_out or query_labels[i] in gallery_labels):
            skipped += 1  # its individual is only in its own encounter (or nowhere else, leave-one-out)
            continue
        first_hits.append(hits[0])
        aps += ap
    assert 0 < skipped < 36
    assert result["n_skipped"] == skipped and result["n_queries"] == len(first_hits)
    assert result["map"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert result["top1"] == pytest.approx(np.mean([h == 0 for h in first_hits]), abs=1e-12)
    assert result["top3"] == pytest.approx(np.mean([h is not None and h < 3 for h in first_hits]), abs=1e-12)


def test_same_encounter_match_no_longer_counts_and_embeddings_agree_with_scores():
    # Query 0's best match is its encounter's other photo; without it, a wrong individual ranks first.
    embeddings = unit([[1, 0, 0], [0.99, 0.1, 0], [0.9, 0.4, 0], [0.5, 0.8, 0.3], [0, 1, 0]])
    labels, encounters = ["a", "a", "b", "a", "c"], ["s1", "s1", "s2", "s3", ""]
    plain = retrieval_metrics(embeddings[:1], labels[:1], embeddings[1:], labels[1:])
    excluded = retrieval_metrics(embeddings[:1], labels[:1], embeddings[1:], labels[1:],
                                 query_groups=encounters[:1], gallery_groups=encounters[1:])
    assert plain["top1"] == 1.0 and excluded["top1"] == 0.0 and excluded["top5"] == 1.0
    assert excluded["map"] == pytest.approx(0.5)
    loo = retrieval_metrics(embeddings, labels, query_groups=encounters, gallery_groups=encounters)
    similarity = embeddings @ embeddings.T
    assert loo == retrieval_metrics_from_similarity(similarity, labels, leave_one_out=True,
                                                    query_groups=encounters, gallery_groups=encounters)
    # Query 1 ("a", s1): a's other photo outside s1 is 3; "" and None are no encounter and exclude nothing.
    assert loo["n_queries"] == 3 and loo["n_skipped"] == 2


def test_groups_must_come_in_pairs_and_match_lengths():
    similarity = np.zeros((2, 3))
    with pytest.raises(ValueError, match="together"):
        retrieval_metrics_from_similarity(similarity, [0, 1], [0, 1, 1], query_groups=["x", "y"])
    with pytest.raises(ValueError, match="gallery_groups"):
        retrieval_metrics_from_similarity(similarity, [0, 1], [0, 1, 1], query_groups=["x", "y"], gallery_groups=["x"])


def test_a_closed_set_answerable_only_in_the_queries_own_encounters_says_so_and_only_that_is_left_out():
    from wildreid.evaluation.metrics import NoAnswerableQueryError
    from wildreid.evaluation.protocols import encounter_guarded

    with pytest.raises(NoAnswerableQueryError, match="in the gallery outside its own encounter"):
        retrieval_metrics(np.eye(2), ["a", "b"], np.eye(2), ["a", "b"], query_groups=["s1", "s2"],
                          gallery_groups=["s1", "s2"])
    left_out = {}
    assert encounter_guarded("okapi", lambda: retrieval_metrics(
        np.eye(2), ["a", "b"], np.eye(2), ["a", "b"], query_groups=["s1", "s2"], gallery_groups=["s1", "s2"]),
        True, left_out) is None
    assert "outside its own encounter" in left_out["okapi"]
    with pytest.raises(ValueError, match="NaN"):  # a broken input is an error even when excluding
        encounter_guarded("zebra", lambda: retrieval_metrics(np.full((2, 2), np.nan), ["a", "b"]), True, {})
