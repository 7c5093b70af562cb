"""Gallery: persistence, model-tag refusal, individual-level ranking, new-individual decisions,
per-file failures and result writers."""
from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest

from wildreid.identification import (Gallery, ModelMismatchError, ModelTag, preprocessing_signature, weights_content_hash,
                                     write_results_csv, write_results_json)
from wildreid.matching import LocalFeatureCache, LocalFeatureExtractor, LocalFeatures
from wildreid.identification.search import l2_normalize

DIM = 32
TAG_A = ModelTag("wildreid/model-a", "0123abcd", DIM, 224, preprocessing_signature({"image_size": 224}))
TAG_B = ModelTag("wildreid/model-b", "4567ef01", DIM, 224, preprocessing_signature({"image_size": 224}))


def individuals(num_ids: int, per_id: int, seed: int, spread: float = 0.5, prefix: str = "id"):
    """Embeddings of `per_id` photos for each of `num_ids` synthetic individuals."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, DIM))
    labels = np.repeat(np.arange(num_ids), per_id)
    embeddings = l2_normalize(centres[labels] + spread * rng.standard_normal((len(labels), DIM)))
    names = [f"{prefix}{label}" for label in labels]
    return embeddings, names, centres


def make_gallery(num_ids=20, per_id=4, seed=0, spread=0.5, **kwargs) -> tuple[Gallery, np.ndarray]:
    embeddings, names, centres = individuals(num_ids, per_id, seed, spread)
    gallery = Gallery(**kwargs)
    metadata = pd.DataFrame({"image_id": [f"img{i}" for i in range(len(names))], "identity": names,
                             "species": "zebra", "path": [f"zebra/{n}/{i}.jpg" for i, n in enumerate(names)],
                             "viewpoint": ["left", "right"] * (len(names) // 2)})
    gallery.add(embeddings, metadata, TAG_A)
    return gallery, centres


def test_identify_ranks_individuals_by_their_best_image():
    gallery = Gallery()
    embeddings = l2_normalize(np.eye(DIM)[:6] + 0.01)
    gallery.add(embeddings, {"image_id": list("abcdef"), "identity": ["x", "x", "x", "y", "z", "z"]}, TAG_A)
    query = l2_normalize(0.9 * np.eye(DIM)[2] + 0.5 * np.eye(DIM)[3] + 0.3 * np.eye(DIM)[4] + 0.2 * np.eye(DIM)[0])
    [result] = gallery.identify(query[None], TAG_A, top_k=5, query_ids=["q"])
    assert [c.identity for c in result.candidates] == ["x", "y", "z"]  # each individual once
    brute = embeddings @ query
    assert [c.image_id for c in result.candidates] == ["c", "d", "e"]
    assert result.candidates[0].score == pytest.approx(brute[2], abs=1e-5)
    assert result.is_new is None and result.candidates[0].probability is None


def test_top_k_individuals_match_brute_force_aggregation():
    gallery, centres = make_gallery(num_ids=30, per_id=5, seed=1)
    queries = l2_normalize(centres[:10] + 0.8 * np.random.default_rng(2).standard_normal((10, DIM)))
    results = gallery.identify(queries, TAG_A, top_k=4)
    sims = queries @ gallery.embeddings.T
    names = gallery.metadata["identity"].to_numpy(dtype=str)
    for result, row in zip(results, sims):
        best = pd.Series(row).groupby(names).max().sort_values(ascending=False)
        assert [c.identity for c in result.candidates] == best.index[:4].tolist()
        np.testing.assert_allclose([c.score for c in result.candidates], best.values[:4], atol=1e-5)


def test_model_b_queries_are_refused_naming_both_models():
    gallery, centres = make_gallery()
    with pytest.raises(ModelMismatchError) as error:
        gallery.identify(l2_normalize(centres[:1]), TAG_B)
    assert "wildreid/model-a@0123abcd" in str(error.value) and "wildreid/model-b@4567ef01" in str(error.value)
    with pytest.raises(ModelMismatchError, match="model-b"):
        gallery.add(l2_normalize(centres[:1]), {"image_id": ["new"], "identity": ["n"]}, TAG_B)
    other_size = ModelTag(TAG_A.model_name_or_path, TAG_A.revision, DIM, 384, TAG_A.preprocessing)
    with pytest.raises(ModelMismatchError, match="image_size 384"):
        gallery.identify(l2_normalize(centres[:1]), other_size)
    with pytest.raises(ValueError, match="shape \\(N, 32\\)"):
        gallery.identify(np.ones((1, 16), np.float32) / 4, TAG_A)


def test_same_weights_from_another_path_are_accepted_by_content_hash():
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}
    digest = weights_content_hash(weights)
    assert digest == weights_content_hash(dict(reversed(list(weights.items()))))
    assert digest != weights_content_hash({**weights, "b": np.ones(3, np.float32)})
    torch = pytest.importorskip("torch")
    assert digest == weights_content_hash({k: torch.from_numpy(v) for k, v in weights.items()})
    gallery = Gallery()
    gallery.add(l2_normalize(np.eye(DIM)[:2]), {"image_id": ["a", "b"], "identity": ["x", "y"]},
                ModelTag("/models/run1", digest, DIM))
    query = l2_normalize(np.eye(DIM)[:1])
    assert gallery.identify(query, ModelTag("./run1", digest, DIM))[0].candidates[0].identity == "x"
    with pytest.raises(ModelMismatchError):
        gallery.identify(query, ModelTag("./run1", weights_content_hash({"w": np.ones(1)}), DIM))


def test_add_rejects_bad_metadata_and_embeddings():
    gallery, centres = make_gallery(num_ids=3, per_id=2)
    one = l2_normalize(centres[:1])
    with pytest.raises(ValueError, match="repeated: \\['img0'\\]"):
        gallery.add(one, {"image_id": ["img0"], "identity": ["x"]}, TAG_A)
    with pytest.raises(ValueError, match="'identity' column"):
        gallery.add(one, {"image_id": ["new"]}, TAG_A)
    with pytest.raises(ValueError, match="row 1 has no identity"):
        gallery.add(l2_normalize(centres[:2]), {"image_id": ["n1", "n2"], "identity": ["x", None]}, TAG_A)
    with pytest.raises(ValueError, match="2 embeddings but 1 metadata rows"):
        gallery.add(l2_normalize(centres[:2]), {"image_id": ["n1"], "identity": ["x"]}, TAG_A)
    with pytest.raises(ValueError, match="L2-normalised"):
        gallery.add(centres[:1], {"image_id": ["n1"], "identity": ["x"]}, TAG_A)
    assert len(gallery) == 6


def test_save_load_round_trip(tmp_path):
    gallery, centres = make_gallery(num_ids=10, per_id=3)
    gallery.calibration = {"new_individual_threshold": 0.5, "criterion": "balanced"}
    queries = l2_normalize(centres[:5])
    before = gallery.identify(queries, TAG_A, top_k=3)
    folder = gallery.save(tmp_path / "gallery")
    config = json.loads((folder / "gallery.json").read_text())
    revision = config["revision"]
    assert sorted(p.name for p in folder.iterdir()) == [
        ".gallery.lock", f"embeddings.{revision}.safetensors", "gallery.json", f"metadata.{revision}.parquet"]
    assert config["model"]["model_name_or_path"] == "wildreid/model-a" and config["counts"]["individuals"] == 10
    loaded = Gallery.load(folder)
    assert loaded.model_tag == TAG_A and len(loaded) == 30 and loaded.identities == gallery.identities
    np.testing.assert_array_equal(loaded.embeddings, gallery.embeddings)
    pd.testing.assert_frame_equal(loaded.metadata, gallery.metadata)
    assert json.loads(loaded.metadata.at[0, "extra"]) == {"viewpoint": "left"}
    after = loaded.identify(queries, TAG_A, top_k=3)
    assert [r.to_dict() for r in after] == [r.to_dict() for r in before]
    assert all(r.is_new is False for r in after)
    with pytest.raises(FileExistsError):
        gallery.save(folder)
    gallery.save(folder, overwrite=True)


def test_load_reports_the_broken_file(tmp_path):
    gallery, _ = make_gallery(num_ids=3, per_id=2)
    folder = gallery.save(tmp_path / "g")
    embeddings = folder / json.loads((folder / "gallery.json").read_text())["files"]["embeddings"]["name"]
    embeddings.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"{embeddings.name}: checksum differs"):
        Gallery.load(folder)
    (folder / "gallery.json").write_text("{}")
    with pytest.raises(ValueError, match="gallery.json: not a wildreid-gallery"):
        Gallery.load(folder)


def test_local_feature_cache_is_stored_beside_the_gallery(tmp_path):
    gallery, _ = make_gallery(num_ids=2, per_id=2)
    extractor = LocalFeatureExtractor(max_keypoints=8)
    rng = np.random.default_rng(0)
    features = [LocalFeatures(rng.random((3, 2), np.float32), rng.integers(0, 255, (3, 128), np.uint8))
                for _ in range(4)]
    cache = LocalFeatureCache.from_features(gallery.metadata["image_id"], features, extractor.config)
    partial = LocalFeatureCache.from_features(["img0"], features[:1], extractor.config)
    with pytest.raises(ValueError, match="lacks 3 gallery images"):
        gallery.save(tmp_path / "g", local_features=partial)
    folder = gallery.save(tmp_path / "g", local_features=cache)
    assert json.loads((folder / "gallery.json").read_text())["local_features"]["config"] == extractor.config
    loaded = Gallery.load_local_features(folder, expected_config=extractor.config)
    np.testing.assert_array_equal(loaded["img3"].descriptors, features[3].descriptors)


def test_explicit_threshold_marks_unseen_individual_new():
    gallery, _ = make_gallery(num_ids=20, per_id=4, seed=0)
    unseen, _, _ = individuals(1, 1, seed=99)
    known = gallery.embeddings[:1]
    results = gallery.identify(np.vstack([known, unseen]), TAG_A, threshold=0.6)
    assert [r.is_new for r in results] == [False, True]
    assert results[1].top_score < 0.6 <= results[0].top_score


def test_unseen_individual_is_new_at_the_calibrated_threshold(tmp_path):
    gallery, centres = make_gallery(num_ids=30, per_id=4, seed=0, spread=0.35)
    rng = np.random.default_rng(5)
    # Validation: fresh photos of 20 known individuals and of 20 individuals absent from the gallery.
    val_known = l2_normalize(centres[:20] + 0.35 * rng.standard_normal((20, DIM)))
    val_unknown, _, _ = individuals(20, 1, seed=6)
    threshold = gallery.calibrate_new_individual_threshold(
        np.vstack([val_known, val_unknown]), [f"id{i}" for i in range(20)] + [f"new{i}" for i in range(20)], TAG_A)
    assert gallery.calibration["known_samples"] == 20 and gallery.calibration["unknown_samples"] == 40
    test_known = l2_normalize(centres[20:] + 0.35 * rng.standard_normal((10, DIM)))
    test_unseen, _, _ = individuals(10, 1, seed=7)
    results = Gallery.load(gallery.save(tmp_path / "g")).identify(np.vstack([test_known, test_unseen]), TAG_A)
    assert all(r.threshold == threshold for r in results)
    assert [r.is_new for r in results] == [r.top_score < threshold for r in results]
    assert sum(not r.is_new for r in results[:10]) >= 9 and sum(r.is_new for r in results[10:]) >= 9
    top_probability = [r.candidates[0].probability for r in results]
    assert np.mean(top_probability[:10]) > 0.5 > np.mean(top_probability[10:])


def test_calibration_from_gallery_images_alone_leaves_each_query_out():
    gallery, _ = make_gallery(num_ids=30, per_id=4, seed=3)
    threshold = gallery.calibrate_new_individual_threshold(
        gallery.embeddings, gallery.metadata["identity"], TAG_A, query_image_ids=gallery.metadata["image_id"])
    # Without leaving the query image out every known score would be 1.0.
    assert threshold < 0.99
    assert gallery.calibration["known_samples"] == 120 and gallery.calibration["unknown_samples"] == 120


def test_approximate_search_above_threshold_finds_the_same_individuals():
    exact, centres = make_gallery(num_ids=200, per_id=5, seed=4)
    approximate = Gallery(approximate_threshold=500)
    approximate.add(exact.embeddings, exact.metadata, TAG_A)
    queries = l2_normalize(centres[:50] + 0.3 * np.random.default_rng(8).standard_normal((50, DIM)))
    exact_top = [r.candidates[0].identity for r in exact.identify(queries, TAG_A, top_k=1)]
    approximate_top = [r.candidates[0].identity for r in approximate.identify(queries, TAG_A, top_k=1)]
    assert approximate._index.is_approximate and not exact._index.is_approximate
    assert np.mean(np.array(exact_top) == np.array(approximate_top)) >= 0.95


def test_result_writers(tmp_path):
    from wildreid.embedding import LoadFailure

    gallery, centres = make_gallery(num_ids=5, per_id=2)
    results = gallery.identify(l2_normalize(centres[:2]), TAG_A, top_k=2, query_ids=["q1.jpg", "q2.jpg"], threshold=0.3)
    failures = [LoadFailure("broken.jpg", "ImageLoadError: cannot identify image file")]
    payload = json.loads(write_results_json(results, tmp_path / "r.json", failures).read_text())
    assert payload["results"][0]["query"] == "q1.jpg" and len(payload["results"][0]["candidates"]) == 2
    assert payload["failures"] == [{"file": "broken.jpg", "reason": "ImageLoadError: cannot identify image file"}]
    with open(write_results_csv(results, tmp_path / "r.csv", failures), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["query"], r["rank"]) for r in rows] == [
        ("q1.jpg", "1"), ("q1.jpg", "2"), ("q2.jpg", "1"), ("q2.jpg", "2"), ("broken.jpg", "")]
    assert rows[0]["identity"] == results[0].candidates[0].identity and rows[-1]["error"].startswith("ImageLoadError")


def test_identify_images_reports_and_skips_corrupt_files(tmp_path):
    from PIL import Image

    gallery = Gallery()
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}

    def embed(images):  # mean colour padded to DIM: a stand-in model for the plumbing
        means = np.array([np.asarray(image, np.float32).reshape(-1, 3).mean(0) for image in images])
        return l2_normalize(np.hstack([means, np.zeros((len(images), DIM - 3))]))

    gallery.add(embed([Image.new("RGB", (8, 8), c) for c in colours.values()]),
                {"image_id": list(colours), "identity": list(colours)}, TAG_A)
    good = tmp_path / "green.png"
    Image.new("RGB", (16, 16), colours["green"]).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    results, failures = gallery.identify_images([corrupt, good, tmp_path / "gone.jpg", good], embed, TAG_A,
                                                top_k=1, batch_size=1, progress=False)
    assert [r.query for r in results] == [str(good), str(good)]
    assert all(r.candidates[0].identity == "green" for r in results)
    assert [f.file for f in failures] == [str(corrupt), str(tmp_path / "gone.jpg")]


def test_preprocessing_signature_is_stable_across_processor_versions():
    """Galleries indexed before the processor had `size` and `do_*` flags still match the same preprocessing."""
    from modeling_wildreid import WildReIDImageProcessor

    before = {"image_size": 64, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
              "fast_downscale": True}
    processor = WildReIDImageProcessor(size=64, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    assert preprocessing_signature(processor.to_dict()) == preprocessing_signature(before)
    unnormalised = WildReIDImageProcessor(size=64, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_normalize=False)
    assert preprocessing_signature(unnormalised.to_dict()) != preprocessing_signature(before)


def test_test_time_flip_is_part_of_the_embedding_space():
    gallery, centres = make_gallery()
    flipped = ModelTag(TAG_A.model_name_or_path, TAG_A.revision, DIM, 224, TAG_A.preprocessing, flip_test=True)
    with pytest.raises(ModelMismatchError, match="test-time flip"):
        gallery.identify(l2_normalize(centres[:1]), flipped)
    # Tags written before the flag existed read as without flip.
    legacy = {key: value for key, value in TAG_A.to_dict().items() if key != "flip_test"}
    assert ModelTag.from_dict(legacy) == TAG_A and ModelTag.from_dict(flipped.to_dict()) == flipped
