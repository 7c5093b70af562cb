"""`wildreid index --local-features | calibrate --method | identify --method` on generated images: the saved
descriptor index, the per-species method choice and queries answered with global, local, fusion and auto."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from wildreid.identification import Gallery
from wildreid.identification.cli import main
from wildreid.identification.gallery_methods import fit_method_choice
from wildreid.identification.local_retrieval import load_descriptor_index
from wildreid.matching.one_vs_many import DescriptorIndex

from test_cli import save_model

DATA = "synthetic[n_species=2,n_identities=6,images_per_identity=4,image_size=96,seed=5]"


@pytest.fixture(scope="module")
def galleries(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    model = save_model(root / "model", seed=0)
    common = ["--model", str(model), "--datasets", f"{DATA}:train", "--num_workers", "0"]
    assert main(["index", *common, "--output", str(root / "local"), "--local-features"]) == 0
    assert main(["index", *common, "--output", str(root / "plain")]) == 0
    return root


@pytest.fixture(scope="module")
def calibrated(galleries, tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibrated") / "gallery"
    shutil.copytree(galleries / "local", folder)
    shutil.copytree(galleries / "model", folder.parent / "model")  # the gallery names its model relatively
    assert main(["calibrate", "--gallery", str(folder), "--datasets", f"{DATA}:train", "--method", "auto",
                 "--local-features", "--num_workers", "0"]) == 0  # its SIFT, not weighed against ALIKED
    return folder


def test_index_saves_the_descriptor_index_in_the_revision(galleries):
    folder = galleries / "local"
    manifest = json.loads((folder / "gallery.json").read_text())
    entry = manifest["files"]["descriptor_index"]
    assert entry["name"].startswith("descriptor_index.") and len(entry["sha256"]) == 64
    gallery = Gallery.load(folder)
    index, image_ids = DescriptorIndex.from_npz(folder / entry["name"], gallery.local_features_config)
    assert image_ids == list(gallery.metadata["image_id"]) and index.num_images == len(gallery)
    assert len(index) == sum(len(f) for f in Gallery.load_local_features(folder).get_many(image_ids))


def test_a_descriptor_index_of_other_extractor_settings_is_refused_naming_both(galleries):
    folder = galleries / "local"
    gallery = Gallery.load(folder)
    other = {**gallery.local_features_config, "max_keypoints": 7}
    path = folder / json.loads((folder / "gallery.json").read_text())["files"]["descriptor_index"]["name"]
    with pytest.raises(ValueError) as error:
        DescriptorIndex.from_npz(path, other)
    assert "'max_keypoints': 512" in str(error.value) and "'max_keypoints': 7" in str(error.value)  # both named
    with pytest.raises(ValueError, match="max_keypoints': 7"):
        load_descriptor_index(folder, list(gallery.metadata["image_id"]), other)


def test_a_keypoint_budget_given_to_index_is_kept_by_the_gallery_and_used_by_its_queries(galleries, tmp_path):
    folder = tmp_path / "budget"
    assert main(["index", "--model", str(galleries / "model"), "--datasets", f"{DATA}:train", "--output", str(folder),
                 "--local-features", "--max_keypoints", "16", "--num_workers", "0"]) == 0
    gallery = Gallery.load(folder)
    assert gallery.local_features_config["max_keypoints"] == 16
    features = Gallery.load_local_features(folder).get_many(list(gallery.metadata["image_id"]))
    assert max(len(f) for f in features) == 16  # generated stripes give more than 16 keypoints per image
    output = tmp_path / "matches.json"
    assert main(["identify", "--gallery", str(folder), "--datasets", f"{DATA}:test", "--method", "local",
                 "--output", str(output), "--num_workers", "0"]) == 0
    assert {r["method"] for r in json.loads(output.read_text())["results"]} == {"local"}


def test_index_refuses_a_keypoint_budget_below_one(galleries, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["index", "--model", str(galleries / "model"), "--datasets", f"{DATA}:train",
              "--output", str(tmp_path / "zero"), "--local-features", "--max_keypoints", "0"])
    assert stopped.value.code == 2 and not (tmp_path / "zero").exists()
    assert "--max_keypoints must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a budget without keypoints to keep would be silently ignored
        main(["index", "--model", str(galleries / "model"), "--datasets", f"{DATA}:train",
              "--output", str(tmp_path / "plain"), "--max_keypoints", "2048"])
    assert "give --local-features" in capsys.readouterr().err and not (tmp_path / "plain").exists()


def test_a_folder_without_the_index_builds_it_in_memory(galleries, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(galleries / "local", folder)
    manifest = json.loads((folder / "gallery.json").read_text())
    (folder / manifest["files"].pop("descriptor_index")["name"]).unlink()
    (folder / "gallery.json").write_text(json.dumps(manifest))
    gallery = Gallery.load(folder)
    index, features = load_descriptor_index(folder, list(gallery.metadata["image_id"]), gallery.local_features_config)
    assert index.num_images == len(features) == len(gallery)


def test_calibrate_auto_records_a_choice_per_species(calibrated, capsys):
    choices = Gallery.load(calibrated).calibration["method_choice"]
    assert sorted(choices) == ["synthetic-spots", "synthetic-stripes"]
    for choice in choices.values():
        assert choice["method"] in ("global", "local", "fusion") and choice["requested"] == "auto"
        figures = choice["validation"]
        assert set(figures) == {"global", "local", "fusion"}
        assert choice["method"] == max(("global", "local", "fusion"), key=lambda m: (figures[m]["map"],
                                                                                  -("global", "local", "fusion").index(m)))
        assert choice["fusion"]["combiner"] in ("mean", "logistic")


@pytest.mark.parametrize("method", ["fusion", "local", "auto"])
def test_identify_answers_with_the_method_and_says_which(calibrated, tmp_path, method):
    output = tmp_path / "matches.json"
    assert main(["identify", "--gallery", str(calibrated), "--datasets", f"{DATA}:test", "--method", method,
                 "--output", str(output), "--num_workers", "0", "--top_k", "3"]) == 0
    results = json.loads(output.read_text())["results"]
    choices = Gallery.load(calibrated).calibration["method_choice"]
    assert results
    for result in results:
        species = result["query"].split("/")[0]
        expected = choices[species]["method"] if method == "auto" else method
        assert result["method"] == expected and result["note"] is None
        assert len(result["candidates"]) == 3
        assert {c["species"] for c in result["candidates"]} == {species}  # its species' images only
        scores = [c["score"] for c in result["candidates"]]
        assert scores == sorted(scores, reverse=True)


def test_a_query_without_keypoints_gets_the_global_answer_and_says_so(galleries, tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(blank)
    output = tmp_path / "matches.json"
    assert main(["identify", "--gallery", str(galleries / "local"), "--images", str(blank), "--method", "local",
                 "--output", str(output)]) == 0
    result = json.loads(output.read_text())["results"][0]
    assert result["method"] == "global" and "no keypoints" in result["note"]
    global_output = tmp_path / "global.json"
    assert main(["identify", "--gallery", str(galleries / "local"), "--images", str(blank), "--method", "global",
                 "--output", str(global_output)]) == 0
    expected = json.loads(global_output.read_text())["results"][0]["candidates"]
    assert [c["identity"] for c in result["candidates"]] == [c["identity"] for c in expected]


def test_local_methods_without_keypoints_fail_clearly(galleries, capsys):
    folder = str(galleries / "plain")
    for command in (["identify", "--gallery", folder, "--datasets", f"{DATA}:test", "--method", "local"],
                    ["identify", "--gallery", folder, "--datasets", f"{DATA}:test", "--method", "fusion"],
                    ["calibrate", "--gallery", folder, "--datasets", f"{DATA}:train", "--method", "auto"]):
        assert main([*command, "--num_workers", "0"]) == 2
        assert "--local-features" in capsys.readouterr().err


def test_fusion_before_calibration_fails_clearly(galleries, capsys):
    assert main(["identify", "--gallery", str(galleries / "local"), "--datasets", f"{DATA}:test", "--method", "fusion",
                 "--num_workers", "0"]) == 2
    assert "wildreid calibrate --method fusion" in capsys.readouterr().err


def test_identify_by_method_with_the_onnx_runtime(galleries, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx_dir = tmp_path / "onnx"
    assert main(["export", "--format", "onnx", "--model", str(galleries / "model"), "--output", str(onnx_dir)]) == 0
    answers = {}
    for runtime, model in (("torch", galleries / "model"), ("onnx", onnx_dir)):
        output = tmp_path / f"{runtime}.json"
        assert main(["identify", "--gallery", str(galleries / "local"), "--runtime", runtime, "--model", str(model),
                     "--datasets", f"{DATA}:test", "--method", "local", "--output", str(output),
                     "--num_workers", "0"]) == 0
        answers[runtime] = [(r["method"], r["candidates"][0]["identity"])
                            for r in json.loads(output.read_text())["results"]]
    assert answers["onnx"] == answers["torch"] and {method for method, _ in answers["onnx"]} == {"local"}


def test_the_method_choice_is_fitted_on_at_most_max_images_whole_individuals_per_species():
    rng = np.random.default_rng(0)
    identities = [f"a/{i // 4}" for i in range(20)] + [f"b/{i // 2}" for i in range(6)]  # 5 x 4 images, 3 x 2
    species = ["a"] * 20 + ["b"] * 6
    embeddings = rng.normal(size=(26, 8)).astype(np.float32)
    capped = fit_method_choice("global", embeddings, identities, species, None, None, max_images=10)
    assert capped["a"]["validation_queries"] == 8  # two whole individuals; a third would make 12
    assert capped["b"]["validation_queries"] == 6  # under the cap: all
    assert fit_method_choice("global", embeddings, identities, species, None, None,
                             max_images=None)["a"]["validation_queries"] == 20


def test_the_method_choice_can_be_fitted_across_encounters_only():
    from wildreid.matching.selection import leave_one_out_figures

    rng = np.random.default_rng(1)
    identities = [f"a/{i // 4}" for i in range(16)] + [f"b/{i // 2}" for i in range(6)]
    species = ["a"] * 16 + ["b"] * 6
    # a: each individual in two sightings of two photos; b: each individual in one sighting only.
    encounters = [f"{name}-{i % 4 // 2}" for i, name in enumerate(identities[:16])] + [f"{n}-0" for n in identities[16:]]
    embeddings = rng.normal(size=(22, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    plain = fit_method_choice("global", embeddings, identities, species, None, None)
    across = fit_method_choice("global", embeddings, identities, species, None, None, encounters=encounters)
    assert set(plain) == {"a", "b"} and set(across) == {"a"}  # b has no re-sighted individual to validate on
    cosine = embeddings[:16] @ embeddings[:16].T
    assert across["a"]["validation"]["global"] == leave_one_out_figures(cosine, np.array(identities[:16], dtype=object),
                                                                        np.array(encounters[:16], dtype=object))
    assert across["a"]["validation"] != plain["a"]["validation"]


def test_calibrate_takes_exclude_same_encounter(monkeypatch):
    import wildreid.identification.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "calibrate_choosing_features", lambda *args, **kwargs: seen.update(kwargs)
                        or {"threshold": 0.5, "choices": {}, "embedding": None, "extractor": None})
    assert main(["calibrate", "--gallery", "g", "--datasets", f"{DATA}:train", "--exclude_same_encounter"]) == 0
    assert seen["exclude_same_encounter"] is True


def test_a_compressed_descriptor_index_is_kept_by_every_save_and_rebuild(galleries, tmp_path):
    folder = tmp_path / "ivfpq"
    # 32 keypoints an image: about a thousand descriptors, enough to train the PQ codebooks (256 each) in seconds
    # (the default budget's ~18,000 took about 12 s per build, and this test builds four times).
    assert main(["index", "--model", str(galleries / "model"), "--datasets", f"{DATA}:train", "--output", str(folder),
                 "--local-features", "--max_keypoints", "32", "--descriptor_index", "ivfpq", "--num_workers", "0"]) == 0
    gallery = Gallery.load(folder)
    assert gallery.descriptor_index_type == "ivfpq"
    image_ids = list(gallery.metadata["image_id"])
    index, _ = load_descriptor_index(folder, image_ids, gallery.local_features_config)
    assert index.config["index"].startswith("ivfpq")  # 64-byte codes, not the exact index "auto" gives here
    gallery.save(folder, local_features=Gallery.load_local_features(folder), overwrite=True)  # a later revision
    manifest = json.loads((folder / "gallery.json").read_text())
    assert manifest["local_features"]["index_type"] == "ivfpq"
    (folder / manifest["files"].pop("descriptor_index")["name"]).unlink()  # as an older folder: rebuilt in memory
    (folder / "gallery.json").write_text(json.dumps(manifest))
    rebuilt, _ = load_descriptor_index(folder, image_ids, gallery.local_features_config,
                                       index_type=Gallery.load(folder).descriptor_index_type)
    assert rebuilt.config["index"].startswith("ivfpq")
    output = tmp_path / "matches.json"
    assert main(["identify", "--gallery", str(folder), "--datasets", f"{DATA}:test", "--method", "local",
                 "--output", str(output), "--num_workers", "0"]) == 0
    results = json.loads(output.read_text())["results"]
    assert results and {r["method"] for r in results} == {"local"}


def test_index_refuses_a_descriptor_index_without_local_features(galleries, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["index", "--model", str(galleries / "model"), "--datasets", f"{DATA}:train",
              "--output", str(tmp_path / "plain"), "--descriptor_index", "ivfpq"])
    assert stopped.value.code == 2 and not (tmp_path / "plain").exists()
    assert "give --local-features" in capsys.readouterr().err
