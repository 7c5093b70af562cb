"""The int8 check's arithmetic: leave-one-out margins, the answers int8 changes, and held-out individuals."""
from __future__ import annotations

import numpy as np
from datasets import Dataset

from wildreid.identification.int8_check import changed_answers, check_rows, nearest_neighbour_margins


def unit(*rows):
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_margins_are_own_individual_minus_nearest_other_and_nan_for_a_lone_image():
    vectors = unit([1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1])
    margins = nearest_neighbour_margins(vectors, np.array(["a", "a", "b", "c"]))
    cos_ab = float(vectors[0] @ vectors[1])
    assert np.isclose(margins[0], cos_ab - max(vectors[0] @ vectors[2], vectors[0] @ vectors[3]))
    assert margins[0] > 0 and np.isnan(margins[2]) and np.isnan(margins[3])
    # With no other individual to confuse it with, a query says nothing about int8.
    assert np.isnan(nearest_neighbour_margins(vectors[:2], np.array(["a", "a"]))).all()


def test_a_near_tie_that_int8_tips_over_is_one_lost_answer_with_its_fp32_margin():
    fp32 = np.array([0.001, 0.2, -0.003, np.nan])
    int8 = np.array([-0.002, 0.19, 0.001, np.nan])
    changed = changed_answers(fp32, int8)
    assert changed == {"queries": 3, "lost": 1, "gained": 1, "lost_fp32_margins": [0.001],
                       "gained_fp32_margins": [-0.003], "median_abs_fp32_margin": 0.003}


def test_check_rows_share_whole_individuals_with_two_images_or_more_between_species():
    identities = ["a", "a", "a", "b", "c", "c", "d", "d", "e"] + ["p", "p", "q", "q", "r"]
    species = ["zebra"] * 9 + ["pig"] * 5
    data = Dataset.from_dict({"species": species, "identity": identities})
    rows = check_rows(data, images=6, seed=0)
    chosen = [(species[r], identities[r]) for r in rows]
    assert {sp for sp, _ in chosen} == {"zebra", "pig"}  # each species gets its share of 3
    assert not {"b", "e", "r"} & {name for _, name in chosen}
    for key in set(chosen):  # every image of a chosen individual, none left behind for calibration
        assert chosen.count(key) == list(zip(species, identities)).count(key)
    assert check_rows(data, images=0) == [] and check_rows(data, images=6, seed=0) == rows
