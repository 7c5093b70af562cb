"""Publish to the local Hub stand-in (`hub` fixture of tests/hub_stub.py) and read back with the real clients."""
from pathlib import Path

import datasets
from datasets import load_dataset
from huggingface_hub import DatasetCard, HfApi
from hub_datasets_testing import fake_dog_data, fake_lion_data, write_image

from hub_datasets.publish import main, publish
from hub_datasets.schema import FEATURES
from hub_datasets.species import build_species

METADATA = [field for field in FEATURES if field != "image"]


def rows_by_id(dataset):
    return {row["image_id"]: row for row in dataset.cast_column("image", datasets.Image(decode=False))}


def test_publish_to_hub_then_load_dataset_returns_the_same_rows(hub, tmp_path):
    raw = fake_dog_data(fake_lion_data(tmp_path / "raw"))
    repo = hub.new_repo_id("wildreid-datasets")
    publish(["lion"], data_dir=raw, repo=repo, token=hub.token)
    assert main(["--species", "dog", "--data_dir", str(raw), "--repo", repo, "--token", hub.token]) == 0

    for species in ("lion", "dog"):
        loaded = load_dataset(repo, species)
        assert loaded["train"].features == FEATURES
        published = {k: v for split in loaded.values() for k, v in rows_by_id(split).items()}
        built = rows_by_id(build_species(species, raw))
        assert published.keys() == built.keys()
        for image_id, row in built.items():
            assert {k: published[image_id][k] for k in METADATA} == {k: row[k] for k in METADATA}
            assert published[image_id]["image"]["bytes"] == Path(row["image"]["path"]).read_bytes()

    # Same layout as a local publish.
    publish(["lion", "dog"], data_dir=raw, output_dir=tmp_path / "local")
    files = sorted(f for f in HfApi().list_repo_files(repo, repo_type="dataset", token=hub.token) if f.endswith(".parquet"))
    assert files == sorted(p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("*.parquet"))

    card = DatasetCard.load(repo, repo_type="dataset", token=hub.token)
    assert sorted(c["config_name"] for c in card.data.configs) == ["dog", "lion"]
    assert card.data.wildreid["lion"]["statistics"]["images"] == 9 and "| dog |" in card.text


def test_republishing_one_species_on_the_hub_keeps_the_others(hub, tmp_path):
    raw = fake_dog_data(fake_lion_data(tmp_path / "raw"))
    repo = hub.new_repo_id("wildreid-republish")
    publish(["lion", "dog"], data_dir=raw, repo=repo, token=hub.token)
    write_image(raw / "lion" / "train/Lion1/extra.png", seed=77)
    with open(raw / "lion" / "annotations.csv", "a") as handle:
        handle.write("train/Lion1/extra.png,Lion1,train,Body\n")
    publish(["lion"], data_dir=raw, repo=repo, token=hub.token)

    assert len(load_dataset(repo, "lion", split="train")) == 7
    assert len(load_dataset(repo, "dog", split="train")) == 8
    card = DatasetCard.load(repo, repo_type="dataset", token=hub.token)
    assert sorted(card.data.wildreid) == ["dog", "lion"]
    assert card.data.wildreid["lion"]["statistics"]["images"] == 10
    assert card.data.wildreid["dog"]["statistics"]["images"] == 10
