from pathlib import Path

import datasets
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard
from hub_datasets_testing import fake_dog_data, fake_lion_data, write_image

from hub_datasets.publish import main, publish
from hub_datasets.schema import FEATURES
from hub_datasets.species import build_species

METADATA = [field for field in FEATURES if field != "image"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")


@pytest.fixture
def raw(tmp_path):
    return fake_dog_data(fake_lion_data(tmp_path / "raw"))


def assert_same_rows(published, built):
    """Published rows equal the built ones, image bytes included (embedded vs the source files)."""
    published = sorted(published, key=lambda row: row["image_id"])
    built = sorted(built, key=lambda row: row["image_id"])
    assert [{k: row[k] for k in METADATA} for row in published] == [{k: row[k] for k in METADATA} for row in built]
    for row, source in zip(published, built):
        assert row["image"]["bytes"] == Path(source["image"]["path"]).read_bytes()


def rows_of(dataset):
    return list(dataset.cast_column("image", datasets.Image(decode=False)))


def test_local_publish_round_trips_and_writes_the_card(raw, tmp_path):
    out = tmp_path / "pub"
    stats = publish(["lion", "dog"], data_dir=raw, output_dir=out)
    assert stats["lion"]["images"] == 9 and stats["dog"]["individuals"] == 5
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet")) == [
        "dog/test-00000-of-00001.parquet",
        "dog/train-00000-of-00001.parquet",
        "lion/train-00000-of-00001.parquet",
        "lion/val-00000-of-00001.parquet",
    ]
    for species in ("lion", "dog"):
        loaded = load_dataset(str(out), species)
        built = build_species(species, raw)
        assert loaded["train"].features == FEATURES
        assert set(loaded) == set(built["split"])
        assert_same_rows([r for split in loaded.values() for r in rows_of(split)], rows_of(built))

    card = DatasetCard((out / "README.md").read_text())
    assert [c["config_name"] for c in card.data.configs] == ["dog", "lion"]
    assert card.data.license == "other"  # cc-by-4.0 (dog) and unknown (lion) differ
    assert card.data.wildreid["dog"]["license"] == "cc-by-4.0" and "Mougeot" in card.data.wildreid["dog"]["citation"]
    assert card.data.wildreid["lion"]["statistics"] == {
        "images": 9,
        "individuals": 3,
        "images_per_individual": {"min": 3, "median": 3, "max": 3},
        "splits": {"train": 6, "val": 3},
    }
    assert "| lion | [LionData](https://github.com/tvanzyl/wildlife_reidentification) | 9 | 3 | 3 / 3 / 3 | train 6, val 3 | unknown |" in card.text
    assert "| `identity` |" in card.text and "```bibtex" in card.text


def test_republishing_one_species_keeps_the_others(raw, tmp_path):
    out = tmp_path / "pub"
    publish(["lion", "dog"], data_dir=raw, output_dir=out)
    dog_files = {p: p.read_bytes() for p in (out / "dog").iterdir()}
    # The lion source grows by one image; only lion is republished.
    write_image(raw / "lion" / "train/Lion1/extra.png", seed=77)
    with open(raw / "lion" / "annotations.csv", "a") as handle:
        handle.write("train/Lion1/extra.png,Lion1,train,Body\n")
    publish(["lion"], data_dir=raw, output_dir=out)

    assert {p: p.read_bytes() for p in (out / "dog").iterdir()} == dog_files
    card = DatasetCard((out / "README.md").read_text())
    assert sorted(card.data.wildreid) == ["dog", "lion"]
    assert card.data.wildreid["lion"]["statistics"]["images"] == 10
    assert card.data.wildreid["lion"]["statistics"]["images_per_individual"] == {"min": 3, "median": 3, "max": 4}
    assert card.data.wildreid["dog"]["statistics"]["images"] == 10
    assert len(load_dataset(str(out), "lion", split="train")) == 7
    assert len(load_dataset(str(out), "dog", split="train")) == 8


def test_stale_shards_are_removed(raw, tmp_path):
    out = tmp_path / "pub"
    publish(["lion"], data_dir=raw, output_dir=out, max_shard_size=1)  # one shard per image
    assert len(list((out / "lion").glob("train-*.parquet"))) == 6
    publish(["lion"], data_dir=raw, output_dir=out)
    assert [p.name for p in (out / "lion").glob("train-*.parquet")] == ["train-00000-of-00001.parquet"]
    assert len(load_dataset(str(out), "lion", split="train")) == 6


def test_cli(raw, tmp_path, capsys):
    assert main(["--species", "dog", "--data_dir", str(raw), "--output_dir", str(tmp_path / "pub")]) == 0
    assert "dog: 10 images, 5 individuals (2/2/2 per individual)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--species", "zebra", "--output_dir", str(tmp_path / "pub")])
    with pytest.raises(SystemExit):
        main(["--species", "dog", "--repo", "org/x", "--output_dir", str(tmp_path / "pub")])
    with pytest.raises(ValueError, match="exactly one of repo"):
        publish(["dog"], data_dir=raw)


class Interrupted(BaseException):
    """Stands for a kill: nothing after the failing write runs (no cleanup code catches it)."""


def interrupt_after_shards(monkeypatch, count):
    written = []
    original = datasets.Dataset.to_parquet

    def to_parquet(self, path, *args, **kwargs):
        if len(written) == count:
            raise Interrupted(path)
        written.append(path)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "to_parquet", to_parquet)


def test_interrupted_first_publish_is_invisible_and_a_rerun_cleans_up(raw, tmp_path, monkeypatch):
    out = tmp_path / "pub"
    interrupt_after_shards(monkeypatch, 2)
    with pytest.raises(Interrupted):
        publish(["lion"], data_dir=raw, output_dir=out, max_shard_size=1)
    monkeypatch.undo()
    assert not list(out.glob("*.parquet")) and not list(out.glob("*/*.parquet"))  # only hidden staging
    with pytest.raises(Exception) as err:  # no data files at all, not a partial split
        load_dataset(str(out), split="train")
    assert "Interrupted" not in type(err.value).__name__
    publish(["lion"], data_dir=raw, output_dir=out, max_shard_size=1)
    assert len(load_dataset(str(out), "lion", split="train")) == 6
    assert sorted(p.name for p in out.iterdir()) == [".publish.lock", "README.md", "lion"]


def test_interrupted_republish_keeps_the_previous_version(raw, tmp_path, monkeypatch):
    out = tmp_path / "pub"
    publish(["lion"], data_dir=raw, output_dir=out)
    before = (out / "README.md").read_text()
    interrupt_after_shards(monkeypatch, 3)
    with pytest.raises(Interrupted):
        publish(["lion"], data_dir=raw, output_dir=out, max_shard_size=1)
    monkeypatch.undo()
    assert (out / "README.md").read_text() == before
    assert sorted(p.name for p in (out / "lion").iterdir()) == ["train-00000-of-00001.parquet", "val-00000-of-00001.parquet"]
    assert len(load_dataset(str(out), "lion", split="train")) == 6


def test_concurrent_publish_into_one_folder_is_refused(raw, tmp_path):
    from filelock import FileLock

    out = tmp_path / "pub"
    out.mkdir()
    with FileLock(str(out / ".publish.lock"), timeout=0):
        with pytest.raises(RuntimeError, match="another publish is writing to this folder"):
            publish(["lion"], data_dir=raw, output_dir=out)
    publish(["lion"], data_dir=raw, output_dir=out)


def test_cli_reports_bad_output_without_traceback(raw, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["--species", "dog", "--data_dir", str(raw), "--output_dir", str(target)])
    assert exit_info.value.code == 1
    assert f"error: output folder {target} is a file" in capsys.readouterr().err
