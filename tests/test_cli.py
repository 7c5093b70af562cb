"""`wildreid index | calibrate | identify` end to end on generated images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hub_datasets.synthetic import generate_rows
from modeling_wildreid import WildReIDConfig, WildReIDModel
from wildreid.identification.cli import main
from wildreid.identification import Gallery

DATA = "synthetic[n_species=1,n_identities=6,images_per_identity=4,image_size=96,seed=11]"


def save_model(path: Path, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    WildReIDModel(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_model(root / "model", seed=0)
    assert main(["index", "--model", str(model), "--datasets", f"{DATA}:train", "--output", str(root / "gallery"),
                 "--local-features", "--num_workers", "0"]) == 0
    return root


def test_index_writes_a_tagged_gallery_with_local_features(gallery):
    loaded = Gallery.load(gallery / "gallery")
    assert len(loaded) == 20 and len(loaded.identities) == 5  # 5 train individuals x 4 photos
    assert loaded.model_tag.model_name_or_path == "../model"  # relative to the gallery: identify works from anywhere
    assert loaded.model_tag.revision.startswith("sha256:")
    assert len(Gallery.load_local_features(gallery / "gallery")) == 20


def test_identify_images_reports_bad_files_and_keeps_going(gallery, tmp_path, capsys):
    rows = generate_rows(n_species=1, n_identities=6, images_per_identity=4, image_size=96, seed=11)
    good = tmp_path / "query.jpg"
    good.write_bytes(rows[0]["image"]["bytes"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    output = tmp_path / "matches.json"
    assert main(["identify", "--gallery", str(gallery / "gallery"), "--images", str(good), str(broken),
                 "--output", str(output), "--top_k", "3"]) == 0
    written = json.loads(output.read_text())
    assert [r["query"] for r in written["results"]] == [str(good)]
    assert len(written["results"][0]["candidates"]) == 3
    assert written["failures"][0]["file"] == str(broken)
    assert "skipped" in capsys.readouterr().err


def test_calibrate_then_identify_dataset_to_csv(gallery, tmp_path):
    # Validation needs known individuals (gallery photos, each left out of its own search) and new ones.
    # --local-features alone: the gallery's SIFT, not weighed against ALIKED (tests/test_calibrate_extractor.py)
    assert main(["calibrate", "--gallery", str(gallery / "gallery"), "--datasets", f"{DATA}:test", "--local-features",
                 "--num_workers", "0"]) == 2  # only new individuals: refused, nothing to balance against
    assert main(["calibrate", "--gallery", str(gallery / "gallery"), "--datasets", DATA, "--local-features",
                 "--num_workers", "0"]) == 0
    threshold = Gallery.load(gallery / "gallery").calibration["new_individual_threshold"]
    output = tmp_path / "matches.csv"
    assert main(["identify", "--gallery", str(gallery / "gallery"), "--datasets", f"{DATA}:test", "--output",
                 str(output), "--num_workers", "0"]) == 0
    lines = output.read_text().splitlines()
    assert lines[0].startswith("query,rank,identity,score") and len(lines) == 1 + 4 * 5  # 4 photos x top-5
    assert [float(line.split(",")[10]) for line in lines[1:]] == pytest.approx([threshold] * 20)


def test_a_gallery_refuses_another_model(gallery, tmp_path, capsys):
    other = save_model(tmp_path / "other", seed=1)
    code = main(["identify", "--gallery", str(gallery / "gallery"), "--datasets", f"{DATA}:test", "--model", str(other),
                 "--num_workers", "0"])
    assert code == 2
    error = capsys.readouterr().err
    assert "this gallery was built with" in error and str(other) in error


def test_a_flip_test_gallery_embeds_its_queries_with_flip_too(gallery, tmp_path):
    output = tmp_path / "flipped"
    assert main(["index", "--model", str(gallery / "model"), "--datasets", f"{DATA}:train", "--output", str(output),
                 "--flip_test", "--num_workers", "0"]) == 0
    flipped = Gallery.load(output)
    plain = Gallery.load(gallery / "gallery")
    assert flipped.model_tag.flip_test and not plain.model_tag.flip_test
    assert not np.allclose(flipped.embeddings, plain.embeddings, atol=1e-4)
    # identify loads the gallery's model with the gallery's flip setting; a plain query would be refused.
    assert main(["identify", "--gallery", str(output), "--datasets", f"{DATA}:test", "--output",
                 str(tmp_path / "matches.csv"), "--num_workers", "0"]) == 0
    # So does the review app (the same loader), whose session refuses embeddings of another space.
    from wildreid.identification.review import open_session

    session = open_session(output, review_dir=tmp_path / "review")
    assert session.model_tag.flip_test and flipped.model_tag.same_embedding_space(session.model_tag)
