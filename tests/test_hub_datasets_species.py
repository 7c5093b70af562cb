from collections import Counter, defaultdict

import pytest
from hub_datasets_testing import fake_lion_data, write_csv, write_image

from hub_datasets.schema import FEATURES
from hub_datasets.species import SPECIES_BUILDERS, build_species

EXPECTED = {"lion": (740, 94), "nyala": (1942, 237), "dog": (6316, 1298), "pig": (215, 43)}


def sides(keys, labels):
    per = defaultdict(set)
    for key, label in zip(keys, labels):
        per[key].add(label)
    return per


@pytest.mark.real_data
@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_species_counts_and_schema(shared_data, name):
    dataset = build_species(name, shared_data)
    images, individuals = EXPECTED[name]
    assert dataset.features == FEATURES
    assert len(dataset) == images
    assert len(set(dataset["identity"])) == individuals
    assert len(set(dataset["image_id"])) == images
    assert set(dataset["species"]) == {name}
    assert all(identity.startswith(f"{name}/") for identity in dataset["identity"])
    assert None not in set(dataset["split"])
    assert dataset.info.license == SPECIES_BUILDERS[name].info.license and dataset.info.citation


@pytest.mark.real_data
def test_real_species_metadata_and_splits(shared_data):
    lion = build_species("lion", shared_data)
    assert Counter(lion["split"]) == {"train": 594, "val": 146}
    assert "left_face" in set(lion["viewpoint"]) and not any(v != v.lower() for v in lion["viewpoint"])
    assert all(len(s) == 1 for s in sides(lion["identity"], lion["split"]).values())

    nyala = build_species("nyala", shared_data)
    assert Counter(nyala["split"]) == {"train": 1213, "test": 729}
    assert set(nyala["viewpoint"]) == {"left", "right"}
    # A sighting's two flank photos (and the "(1)" duplicate copies) share its number as their encounter.
    encounter = dict(zip(nyala["image_id"], nyala["encounter"]))
    assert encounter["nyala/train/100/124_leftphoto.jpg"] == encounter["nyala/train/100/124_rightphoto.jpg"] == "124"
    assert encounter["nyala/train/218/571_leftphoto(1).jpg"] == "571" and len(set(encounter.values())) == 996

    dog = build_species("dog", shared_data)
    per_identity = sides(dog["identity"], dog["split"])
    assert all(len(s) == 1 for s in per_identity.values())  # disjoint-set default
    assert round(sum(s == {"test"} for s in per_identity.values()) / len(per_identity), 2) == 0.2
    assert dog["split"] == build_species("dog", shared_data)["split"]

    pig = build_species("pig", shared_data)
    assert len(set(pig["encounter"])) == 3
    assert all(len(s) == 1 for s in sides(pig["encounter"], pig["split"]).values())  # group-aware default
    assert all(len(s) == 1 for s in sides(pig["identity"], pig["split"]).values())
    assert 0.1 <= pig["split"].count("test") / len(pig) <= 0.35
    assert all(date.endswith("+00:00") for date in pig["date"])


def test_builder_reads_the_source_layout(tmp_path):
    dataset = build_species("lion", fake_lion_data(tmp_path))
    assert len(dataset) == 9 and dataset.features == FEATURES
    row = dataset[0]
    assert row["image_id"] == "lion/val/Lion0/Lion0_0.png" and row["identity"] == "lion/Lion0"
    assert row["split"] == "val" and row["viewpoint"] == "left_face" and row["source"] == "LionData"
    assert set(dataset["viewpoint"]) == {"left_face"}  # 'Left_Face' and 'left_face' merge
    assert row["image"].size == (24, 24)


def test_builder_reads_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WILDREID_DATA", str(fake_lion_data(tmp_path)))
    assert len(build_species("lion")) == 9


def test_missing_species_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pig/annotations.csv not found.*WILDREID_DATA"):
        build_species("pig", tmp_path)
    with pytest.raises(ValueError, match="unknown species 'zebra'; choose one of"):
        build_species("zebra", tmp_path)


@pytest.mark.parametrize(
    "image, message",
    [
        ("train/Lion0/missing.png", "line 3: image file 'train/Lion0/missing.png' not found"),
        ("../outside.png", "line 3: image path '../outside.png' contains '..'"),
    ],
)
def test_bad_annotation_rows_name_the_line(tmp_path, image, message):
    root = tmp_path / "lion"
    write_image(root / "train/Lion0/a.png")
    write_image(tmp_path / "outside.png")
    write_csv(root / "annotations.csv", ["image", "identity", "split", "view"],
              [["train/Lion0/a.png", "Lion0", "train", "Body"], [image, "Lion0", "train", "Body"]])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build_species("lion", tmp_path)


def test_missing_column_is_named(tmp_path):
    write_csv(tmp_path / "pig" / "annotations.csv", ["image", "identity"], [["a.png", "A"]])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['video'\]"):
        build_species("pig", tmp_path)
