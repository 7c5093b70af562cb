import hashlib
import random
from collections import Counter, defaultdict

import pytest
from hub_datasets_testing import write_image

from hub_datasets.schema import FEATURES, to_dataset
from hub_datasets.splits import (
    closed_set_labels,
    closed_set_split,
    disjoint_set_labels,
    disjoint_set_split,
    group_aware_labels,
    open_set_labels,
    open_set_split,
    split_dataset,
    stable_key,
    time_aware_labels,
    time_aware_split,
)


def population(counts, species="zebra"):
    """identities and image ids for identities with the given image counts."""
    identities, image_ids = [], []
    for i, n in enumerate(counts):
        for j in range(n):
            identities.append(f"{species}/{i:03d}")
            image_ids.append(f"{species}/{i:03d}/{j}.jpg")
    return identities, image_ids


def sides(identities, labels):
    by_identity = defaultdict(set)
    for identity, label in zip(identities, labels):
        by_identity[identity].add(label)
    return by_identity


def test_stable_key_is_sha256_based_and_pinned():
    # Pinned: a change here would silently reshuffle every published split.
    assert stable_key(0, "identity", "zebra/A") == 2887425365310612181
    digest = hashlib.sha256("0\x1fidentity\x1fzebra/A".encode()).digest()
    assert stable_key(0, "identity", "zebra/A") == int.from_bytes(digest[:8], "big")
    identities, _ = population([3] * 10)
    assert disjoint_set_labels(identities, 0.3, seed=7)[::3] == [
        "test", "test", "test", "train", "train", "train", "train", "train", "train", "train"
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda ids, imgs: closed_set_labels(ids, imgs, 0.3, seed=1),
        lambda ids, imgs: open_set_labels(ids, imgs, 0.3, 0.5, seed=1),
        lambda ids, imgs: disjoint_set_labels(ids, 0.3, seed=1),
        lambda ids, imgs: group_aware_labels(ids, [i[-5] for i in imgs], imgs, 0.3, seed=1),
    ],
    ids=["closed", "open", "disjoint", "group"],
)
def test_splits_are_deterministic_seed_dependent_and_row_order_independent(make):
    identities, image_ids = population([1, 2, 3, 5, 8, 2, 4, 6, 3, 7, 2, 9])
    labels = make(identities, image_ids)
    assert labels == make(identities, image_ids)
    order = list(range(len(identities)))
    random.Random(0).shuffle(order)
    shuffled = make([identities[i] for i in order], [image_ids[i] for i in order])
    assert {image_ids[i]: label for i, label in zip(order, shuffled)} == dict(zip(image_ids, labels))
    assert set(labels) == {"train", "test"}


def test_seed_changes_the_split():
    identities, _ = population([3] * 40)
    assert disjoint_set_labels(identities, 0.25, seed=0) != disjoint_set_labels(identities, 0.25, seed=1)


def test_closed_set_keeps_every_test_identity_in_train_and_single_images_in_train():
    counts = [1, 1, 2, 3, 4, 10]
    identities, image_ids = population(counts)
    labels = closed_set_labels(identities, image_ids, 0.2, seed=3)
    per = sides(identities, labels)
    for i, n in enumerate(counts):
        identity = f"zebra/{i:03d}"
        assert per[identity] == ({"train"} if n == 1 else {"train", "test"})
    tested = Counter(identity for identity, label in zip(identities, labels) if label == "test")
    assert tested["zebra/005"] == 2  # round(0.2 * 10)
    assert tested["zebra/002"] == 1  # at least one, at most n - 1


def test_closed_set_fails_clearly_when_all_identities_are_single():
    identities, image_ids = population([1, 1, 1])
    with pytest.raises(ValueError, match="single image.*disjoint_set"):
        closed_set_labels(identities, image_ids)


def test_closed_set_with_one_identity_works():
    identities, image_ids = population([5])
    assert Counter(closed_set_labels(identities, image_ids, 0.4)) == {"train": 3, "test": 2}


def test_open_set_has_the_requested_share_of_unseen_test_identities():
    identities, image_ids = population([4] * 40)
    labels = open_set_labels(identities, image_ids, test_fraction=0.25, unseen_fraction=0.5, seed=0)
    per = sides(identities, labels)
    unseen = [i for i, s in per.items() if s == {"test"}]
    known = [i for i, s in per.items() if s == {"train", "test"}]
    assert len(unseen) + len(known) == sum("test" in s for s in per.values())
    assert abs(len(unseen) / (len(unseen) + len(known)) - 0.5) <= 0.02
    assert all("train" in per[i] for i in per if i not in unseen)


def test_open_set_edge_cases():
    identities, image_ids = population([1, 1, 1])
    with pytest.raises(ValueError, match="single image"):
        open_set_labels(identities, image_ids)
    with pytest.raises(ValueError, match="single identity"):
        open_set_labels(*population([6]))
    with pytest.raises(ValueError, match="unseen_fraction"):
        open_set_labels(*population([3, 3]), unseen_fraction=1.0)


def test_disjoint_set_shares_no_identity_and_handles_single_images():
    identities, _ = population([1, 1, 2, 5, 1, 3, 1, 1, 2, 2])
    labels = disjoint_set_labels(identities, 0.3, seed=5)
    per = sides(identities, labels)
    assert all(len(s) == 1 for s in per.values())
    assert sum(s == {"test"} for s in per.values()) == 3


def test_disjoint_set_edge_cases():
    with pytest.raises(ValueError, match="single identity"):
        disjoint_set_labels(["zebra/A"] * 4)
    assert Counter(disjoint_set_labels(["zebra/A", "zebra/B"], 0.01)) == {"train": 1, "test": 1}
    assert Counter(disjoint_set_labels(["zebra/A", "zebra/B"], 0.99)) == {"train": 1, "test": 1}
    with pytest.raises(ValueError, match="empty"):
        disjoint_set_labels([])


def test_splits_are_computed_per_species():
    zebra_ids, _ = population([2] * 10, "zebra")
    lion_ids, _ = population([2] * 30, "lion")
    labels = disjoint_set_labels(zebra_ids + lion_ids, 0.2, seed=0)
    test_ids = {i for i, label in zip(zebra_ids + lion_ids, labels) if label == "test"}
    assert sum(i.startswith("zebra/") for i in test_ids) == 2
    assert sum(i.startswith("lion/") for i in test_ids) == 6


def test_group_aware_never_straddles_a_group():
    identities, image_ids = [], []
    groups = []
    for video in range(6):
        for frame in range(5 + video * 3):
            identities.append(f"pig/{video % 4}")
            image_ids.append(f"pig/v{video}/{frame}.png")
            groups.append(f"video{video}")
    labels = group_aware_labels(identities, groups, image_ids, 0.3, seed=0)
    per_group = sides(groups, labels)
    assert all(len(s) == 1 for s in per_group.values())
    share = labels.count("test") / len(labels)
    assert 0.15 <= share <= 0.45


def test_group_aware_edge_cases():
    ids = ["pig/A"] * 4
    with pytest.raises(ValueError, match="single group"):
        group_aware_labels(ids, ["v"] * 4, [f"{i}" for i in range(4)])
    # Rows without a group are groups of their own.
    labels = group_aware_labels(ids, [None] * 4, [f"{i}" for i in range(4)], 0.5)
    assert Counter(labels) == {"train": 2, "test": 2}
    # One huge group and a small one: test takes one whole group, train keeps the other.
    labels = group_aware_labels(["pig/A"] * 11, ["big"] * 10 + ["small"], [str(i) for i in range(11)], 0.2, seed=0)
    assert sorted(Counter(labels).values()) == [1, 10]


def test_time_aware_split_puts_the_latest_dates_in_test():
    dates = ["2020-01-01", "2020-01-01", "2020-06-01", "2021-01-01T10:00:00", "2021-03-01", "2022-01-01"]
    identities = ["seal/A", "seal/B", "seal/A", "seal/B", "seal/A", "seal/B"]
    labels = time_aware_labels(identities, dates, test_fraction=0.34)
    assert labels == ["train", "train", "train", "train", "test", "test"]
    assert time_aware_labels(identities, dates, cutoff="2020-06-01") == ["train", "train", "test", "test", "test", "test"]
    # Rows sharing a date never straddle, even when the fraction would cut through them.
    assert time_aware_labels(["seal/A"] * 4, ["2020-01-01", "2021-01-01", "2021-01-01", "2021-01-01"], 0.3) == [
        "train", "test", "test", "test"
    ]


def test_time_aware_edge_cases():
    with pytest.raises(ValueError, match="no date"):
        time_aware_labels(["seal/A", "seal/A"], ["2020-01-01", None])
    with pytest.raises(ValueError, match="single date"):
        time_aware_labels(["seal/A", "seal/B"], ["2020-01-01", "2020-01-01"])


@pytest.fixture
def small_dataset(tmp_path):
    image = str(write_image(tmp_path / "x.png"))
    rows = []
    for i, n in enumerate([1, 3, 4, 2, 5, 3]):
        for j in range(n):
            rows.append(
                {
                    "image": image,
                    "image_id": f"otter/{i}/{j}",
                    "identity": f"otter/{i}",
                    "species": "otter",
                    "source": "test",
                    "date": f"202{j}-01-01",
                    "split": "old",
                }
            )
    return to_dataset(rows)


def test_dataset_wrappers_replace_the_split_column_in_schema_order(small_dataset):
    for split in (
        closed_set_split(small_dataset, 0.3),
        open_set_split(small_dataset, 0.3, 0.5),
        disjoint_set_split(small_dataset, 0.3),
        split_dataset(small_dataset, "group_aware", test_fraction=0.3),
        time_aware_split(small_dataset, 0.3),
    ):
        assert split.features == FEATURES and split.column_names == list(FEATURES)
        assert set(split["split"]) == {"train", "test"}
        assert split["image_id"] == small_dataset["image_id"]
    selected = small_dataset.select(range(3, 15))  # an indices mapping, as after a split selection
    assert closed_set_split(selected, 0.3)["image_id"] == selected["image_id"]
    with pytest.raises(ValueError, match="unknown split strategy"):
        split_dataset(small_dataset, "random")
