import datasets
import pytest
from hub_datasets_testing import fake_lion_data, write_csv, write_image

from hub_datasets.publish import publish
from hub_datasets.schema import FEATURES
from hub_datasets.specs import DatasetSpec, load_spec, load_specs, parse_spec


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lion", DatasetSpec("builtin", name="lion")),
        ("lion:val", DatasetSpec("builtin", name="lion", split="val")),
        (" dog:test ", DatasetSpec("builtin", name="dog", split="test")),
        ("synthetic", DatasetSpec("builtin", name="synthetic")),
        (
            "synthetic[seed=3, n_identities=20,with_boxes=yes]:train",
            DatasetSpec("builtin", name="synthetic", split="train", params=(("n_identities", 20), ("seed", 3), ("with_boxes", True))),
        ),
        ("folder:/data/zebras", DatasetSpec("folder", location="/data/zebras")),
        ("folder:zebras:test", DatasetSpec("folder", location="zebras", split="test")),
        ("folder:C:/data/zebras", DatasetSpec("folder", location="C:/data/zebras")),
        (
            "csv[species=zebra,image_root=../img]:/d/labels.csv:train",
            DatasetSpec("csv", location="/d/labels.csv", split="train", params=(("image_root", "../img"), ("species", "zebra"))),
        ),
        ("coco:ann.json", DatasetSpec("coco", location="ann.json")),
        ("org/wildreid:lion", DatasetSpec("published", name="lion", location="org/wildreid")),
        ("org/wildreid:lion:val", DatasetSpec("published", name="lion", location="org/wildreid", split="val")),
        ("/srv/published:nyala:test", DatasetSpec("published", name="nyala", location="/srv/published", split="test")),
        ("./pub:synthetic", DatasetSpec("published", name="synthetic", location="./pub")),
    ],
)
def test_parse_spec(text, expected):
    parsed = parse_spec(text)
    assert parsed == expected
    assert parse_spec(str(parsed)) == parsed  # str() is the canonical, re-parsable form
    hash(parsed)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty dataset spec; expected built-in NAME"),
        ("lino", "dataset spec 'lino': unknown dataset 'lino'; expected built-in NAME[:SPLIT] with NAME in lion, nyala, dog, pig, synthetic"),
        ("wildreid:lion", "unknown dataset 'wildreid'"),
        ("lion:val:extra", "split 'val:extra' must be a plain name"),
        ("lion:", "split '' must be a plain name"),
        ("lion[seed=1]", "unknown parameter 'seed' for lion; valid: max_identities, max_images_per_identity, sample_seed"),
        ("synthetic[sed=1]", "unknown parameter 'sed' for synthetic; valid: n_species, n_identities"),
        ("synthetic[seed=x]", "parameter seed='x' must be an integer"),
        ("synthetic[seed=1,seed=2]", "given twice"),
        ("synthetic[with_boxes=maybe]", "must be true or false"),
        ("synthetic[seed]", "must be key=value"),
        ("folder", "folder needs a path"),
        ("csv:", "csv needs a path"),
        ("org/wildreid", "needs its species config, e.g. org/wildreid:lion"),
        ("csv[", "dataset spec 'csv[': parameters of csv must be [key=value,...] closed by ']'"),
        ("csv[species=zebra:labels.csv", "parameters of csv must be [key=value,...] closed by ']'"),
        ("synthetic[seed=1", "parameters of synthetic must be"),
    ],
)
def test_parse_spec_errors_name_the_spec_and_the_choices(text, message):
    with pytest.raises(ValueError) as err:
        parse_spec(text)
    assert message in str(err.value)


def test_load_builtin_with_split_from_data_dir(tmp_path):
    data_dir = fake_lion_data(tmp_path)
    assert len(load_spec("lion", data_dir=data_dir)) == 9
    val = load_spec("lion:val", data_dir=data_dir)
    assert set(val["split"]) == {"val"} and len(val) == 3 and val.features == FEATURES
    with pytest.raises(ValueError, match=r"'lion:test': no rows in split 'test'; splits present: \['train', 'val'\]"):
        load_spec("lion:test", data_dir=data_dir)


def test_load_builtin_uses_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WILDREID_DATA", str(fake_lion_data(tmp_path)))
    assert len(load_spec(parse_spec("lion:train"))) == 6


def test_load_synthetic_with_parameters():
    dataset = load_spec("synthetic[n_species=1,n_identities=5,images_per_identity=2,image_size=40,seed=2]:test")
    assert set(dataset["split"]) == {"test"} and len(dataset) == 2 and dataset[0]["image"].size == (40, 40)


def test_load_user_data_split_and_missing_split(tmp_path):
    for name in ("A", "B"):
        write_image(tmp_path / "otters" / name / "0.png")
        write_image(tmp_path / "otters" / name / "1.png", seed=1)
    labels = write_csv(tmp_path / "otters" / "labels.csv", ["image", "identity", "split"],
                       [["A/0.png", "A", "train"], ["A/1.png", "A", "test"], ["B/0.png", "B", "train"]])
    assert load_spec(f"csv:{labels}:test")["image_id"] == ["A/1.png"]
    assert len(load_spec(f"folder[species=otter]:{tmp_path / 'otters'}")) == 4
    with pytest.raises(ValueError, match="no rows in split 'train'; it has no split column values"):
        load_spec(f"folder:{tmp_path / 'otters'}:train")


def test_load_specs_concatenates_and_rejects_overlap(tmp_path):
    data_dir = fake_lion_data(tmp_path)
    both = load_specs(["lion:train", "lion:val"], data_dir=data_dir)
    assert len(both) == 9 and both.features == FEATURES
    with pytest.raises(ValueError, match=r"is in both 'lion' and 'lion:val'"):
        load_specs(["lion", "lion:val"], data_dir=data_dir)
    with pytest.raises(ValueError, match="no dataset specs given"):
        load_specs([])


def test_load_published_local_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    data_dir = fake_lion_data(tmp_path / "raw")
    publish(["lion"], data_dir=data_dir, output_dir=tmp_path / "pub")
    val = load_spec(f"{tmp_path / 'pub'}:lion:val")
    assert val.features == FEATURES and set(val["split"]) == {"val"} and len(val) == 3
    assert len(load_spec(f"{tmp_path / 'pub'}:lion")) == 9
    with pytest.raises(ValueError, match=f"'{tmp_path / 'pub'}:nyala'"):
        load_spec(f"{tmp_path / 'pub'}:nyala")
    with pytest.raises(ValueError, match="test"):
        load_spec(f"{tmp_path / 'pub'}:lion:test")
    with pytest.raises(ValueError, match="neither an existing folder nor a Hub repo id"):
        load_spec(f"{tmp_path / 'nowhere'}:lion")


def test_sampling_parameters_are_deterministic_nested_and_per_species():
    from hub_datasets.splits import subsample_rows

    base = "synthetic[n_species=2,n_identities=6,images_per_identity=4,image_size=32"
    small = load_spec(base + ",max_identities=2,max_images_per_identity=2]")
    assert len(small) == 2 * 2 * 2  # 2 species x 2 identities x 2 images
    assert list(small["image_id"]) == list(load_spec(base + ",max_identities=2,max_images_per_identity=2]")["image_id"])
    larger = set(load_spec(base + ",max_identities=3,max_images_per_identity=3]")["image_id"])
    assert set(small["image_id"]) <= larger  # a larger cap keeps a superset
    other_seed = load_spec(base + ",max_identities=2,max_images_per_identity=2,sample_seed=9]")
    assert set(other_seed["image_id"]) != set(small["image_id"])
    with pytest.raises(ValueError, match="max_identities must be >= 1"):
        subsample_rows(["a/x"], ["1"], max_identities=0)


def test_resplit_parameters_replace_the_source_split():
    base = "synthetic[n_species=1,n_identities=8,images_per_identity=4,image_size=32,split_strategy=closed_set"
    test, train = load_spec(base + "]:test"), load_spec(base + "]:train")
    assert set(test["identity"]) <= set(train["identity"])  # closed set: every test individual is known
    assert not set(test["image_id"]) & set(train["image_id"])
    assert len(load_spec(base + ",test_fraction=0.5]:test")) > len(test)
    with pytest.raises(ValueError, match="unknown split strategy 'random'"):
        load_spec("synthetic[split_strategy=random]")
    with pytest.raises(ValueError, match="need split_strategy"):
        load_spec("synthetic[split_seed=2]")


def test_resplit_from_cuts_only_one_split_into_disjoint_individuals():
    source = "synthetic[n_species=1,n_identities=12,images_per_identity=4,image_size=32"
    held = source + ",resplit_from=train,split_strategy=disjoint_set,test_fraction=0.25]"
    train, fit, original = load_spec(source + "]:train"), load_spec(held + ":test"), load_spec(source + "]:test")
    kept = load_spec(held + ":train")
    assert set(kept["image_id"]) | set(fit["image_id"]) == set(train["image_id"])  # the source's test rows stay out
    assert not set(kept["identity"]) & set(fit["identity"]) and len(fit) > 0
    assert not (set(kept["image_id"]) | set(fit["image_id"])) & set(original["image_id"])
    with pytest.raises(ValueError, match=r"resplit_from='val' has no rows; splits present: \['test', 'train'\]"):
        load_spec(source + ",resplit_from=val,split_strategy=disjoint_set]")
    with pytest.raises(ValueError, match="need split_strategy"):
        load_spec(source + ",resplit_from=train]")


def test_synthetic_parameters_are_bounded_before_any_work():
    with pytest.raises(ValueError, match=r"synthetic\[images_per_identity=1000000000\].*images_per_identity <= 1000"):
        load_spec("synthetic[images_per_identity=1000000000]")
