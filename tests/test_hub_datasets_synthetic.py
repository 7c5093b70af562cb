import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from hub_datasets.schema import FEATURES
from hub_datasets.synthetic import FAMILIES, build_synthetic, generate_rows, make_coat

SMALL = dict(n_species=2, n_identities=4, images_per_identity=3, image_size=64)


def image_bytes(rows):
    return [row["image"]["bytes"] for row in rows]


def test_same_seed_same_bytes_different_seed_different_bytes():
    first = generate_rows(**SMALL, seed=3)
    assert image_bytes(first) == image_bytes(generate_rows(**SMALL, seed=3))
    other = image_bytes(generate_rows(**SMALL, seed=4))
    assert all(a != b for a, b in zip(image_bytes(first), other))


def test_growing_the_dataset_keeps_existing_images():
    small = {row["image_id"]: row["image"]["bytes"] for row in generate_rows(**SMALL, seed=0)}
    large = {row["image_id"]: row["image"]["bytes"] for row in generate_rows(**{**SMALL, "n_identities": 6, "images_per_identity": 4}, seed=0)}
    assert all(large[image_id] == data for image_id, data in small.items())


def test_dataset_layout_and_default_split():
    dataset = build_synthetic(n_species=3, n_identities=10, images_per_identity=2, image_size=48, seed=1)
    assert dataset.features == FEATURES and len(dataset) == 60
    assert set(dataset["species"]) == {f"synthetic-{f}" for f in FAMILIES[:3]}
    assert dataset["identity"][0] == "synthetic-stripes/000" and dataset["image_id"][1] == "synthetic-stripes/000/001.jpg"
    assert dataset[0]["image"].size == (48, 48) and dataset[0]["image"].mode == "RGB"
    assert "never report accuracy" in dataset.info.description
    # Disjoint-set default within each family: 2 of 10 identities per family in test.
    test_identities = {i for i, s in zip(dataset["identity"], dataset["split"]) if s == "test"}
    assert Counter(i.split("/")[0] for i in test_identities) == {f"synthetic-{f}": 2 for f in FAMILIES[:3]}
    assert not test_identities & {i for i, s in zip(dataset["identity"], dataset["split"]) if s == "train"}


def test_individuals_differ_more_than_photos_of_one_individual():
    """Identity lives in the coat: with pose, light and background fixed, two individuals' images
    differ much more than the same individual's image re-rendered with identical settings (equal)."""
    for family in FAMILIES:
        coats = [np.asarray(make_coat(family, np.random.default_rng([0, k])), dtype=np.float32) for k in range(3)]
        alpha = coats[0][..., 3] > 250
        same = np.asarray(make_coat(family, np.random.default_rng([0, 0])), dtype=np.float32)
        assert np.array_equal(coats[0], same)
        for other in coats[1:]:
            assert np.abs(coats[0][alpha, :3] - other[alpha, :3]).mean() > 10, family


def test_photos_vary_in_pose_and_light():
    rows = generate_rows(n_species=1, n_identities=2, images_per_identity=6, image_size=64, seed=0)
    pixels = [np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) for data in image_bytes(rows[:6])]
    differences = [np.abs(pixels[0] - p).mean() for p in pixels[1:]]
    assert min(differences) > 5


def test_boxes_cover_the_body():
    rows = generate_rows(n_species=1, n_identities=2, images_per_identity=4, image_size=96, seed=2, with_boxes=True)
    for row in rows:
        x, y, w, h = row["bbox"]
        assert w > 0 and h > 0 and -1 < row["theta"] < 1
        centre = (x + w / 2, y + h / 2)
        assert -0.2 * 96 < centre[0] - 48 < 0.2 * 96 and -0.2 * 96 < centre[1] - 48 < 0.2 * 96
        assert 0.5 * 96 < w < 1.0 * 96 and 0.4 * w < h < 0.8 * w  # texture is 240 x 144, foreshortened ±20 %
    assert generate_rows(**SMALL)[0]["bbox"] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_species=5), "n_species must be between 1 and 4"),
        (dict(n_identities=1), "n_identities >= 2"),
        (dict(image_size=16), "image_size >= 32"),
        (dict(seed=-1), "seed >= 0"),
        (dict(images_per_identity=1_000_000_000), "images_per_identity <= 1000"),
        (dict(n_identities=10**6), "n_identities <= 10000"),
        (dict(image_size=10**5), "image_size <= 2048"),
        (dict(n_species=4, n_identities=10_000, images_per_identity=10), "more than 100,000 images"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_rows(**kwargs)


def test_one_family_is_the_same_individuals_as_in_the_full_set():
    full = {row["image_id"]: row["image"]["bytes"] for row in generate_rows(**{**SMALL, "n_species": 3}, seed=2)}
    held_out = generate_rows(**SMALL, seed=2, family="rosettes")
    assert {row["species"] for row in held_out} == {"synthetic-rosettes"}
    assert all(full[row["image_id"]] == row["image"]["bytes"] for row in held_out)
    with pytest.raises(ValueError, match="family must be one of"):
        generate_rows(**SMALL, family="plaid")
