import pytest
from hub_datasets_testing import write_image

from hub_datasets.schema import FEATURES, SchemaError, normalize_date, to_dataset, validate_rows


@pytest.fixture
def image(tmp_path):
    return str(write_image(tmp_path / "a.png"))


def row(image_path, **overrides):
    base = {"image": image_path, "image_id": "x/a.png", "identity": "zebra/A", "species": "zebra", "source": "test"}
    return {**base, **overrides}


def test_to_dataset_fills_defaults_and_has_exact_features(image):
    dataset = to_dataset([row(image), row(image, image_id="x/b.png", bbox=[1, 2, 3, 4], theta=0.5, date="2024-05-01")])
    assert dataset.features == FEATURES
    assert dataset[0]["theta"] == 0.0 and dataset[0]["bbox"] is None and dataset[0]["split"] is None
    assert dataset[1]["bbox"] == [1.0, 2.0, 3.0, 4.0] and dataset[1]["date"] == "2024-05-01"
    assert dataset[1]["image"].size == (24, 24)


def test_image_bytes_are_accepted(image):
    with open(image, "rb") as handle:
        data = handle.read()
    dataset = to_dataset([row({"bytes": data, "path": None})])
    assert dataset[0]["image"].size == (24, 24)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"identity": "A"}, "namespaced as 'zebra/<name>'"),
        ({"identity": "zebra/"}, "namespaced"),
        ({"species": "a/b", "identity": "a/b/c"}, "must not contain '/'"),
        ({"image_id": ""}, "missing required field(s) ['image_id']"),
        ({"bbox": [1, 2, 3]}, "bbox must be 4 finite numbers"),
        ({"bbox": [1, 2, 0, 4]}, "width>0"),
        ({"bbox": "1 2 3 4"}, "bbox must be 4 numbers"),
        ({"theta": "left"}, "theta must be a number"),
        ({"theta": float("nan")}, "theta must be finite"),
        ({"date": "yesterday"}, "not ISO-8601"),
        ({"viewpoint": 3}, "viewpoint must be a non-empty string"),
        ({"split": "train set"}, "split 'train set'"),
        ({"colour": "red"}, "unknown field(s) ['colour']"),
        ({"image": "/no/such/file.png"}, "does not exist"),
    ],
)
def test_bad_rows_are_rejected_naming_the_row(image, overrides, message):
    with pytest.raises(SchemaError) as err:
        validate_rows([row(image, image_id="ok/first.png"), row(image, **{"image_id": "x/bad.png", **overrides})], name="mine")
    assert message in str(err.value)
    assert str(err.value).startswith("mine: row 1")


def test_duplicate_image_ids_name_both_rows(image):
    with pytest.raises(SchemaError, match=r"row 2 \('x/a.png'\): duplicate image_id 'x/a.png' \(first used by row 0\)"):
        validate_rows([row(image), row(image, image_id="x/b.png"), row(image)])


def test_empty_dataset_is_rejected():
    with pytest.raises(SchemaError, match="empty"):
        to_dataset([], name="nothing")


def test_dates_are_normalised_to_iso():
    assert normalize_date("2024-01-05") == "2024-01-05"
    assert normalize_date("2024-01-05 09:43:39") == "2024-01-05T09:43:39"
    assert normalize_date("2024-01-05T09:43:39Z") == "2024-01-05T09:43:39+00:00"
