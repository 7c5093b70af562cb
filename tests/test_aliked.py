"""ALIKED local features (kornia, shipped weights) in the shared local paths: one-vs-many retrieval of a rotated
and scaled copy, checked weights, float16 caches, and features of one extractor refused where another's are
expected, naming both."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from wildreid import threads
from wildreid.matching import LocalFeatureCache, LocalFeatureExtractor, LocalMatcher
from wildreid.matching import aliked as aliked_module
from wildreid.matching import keypoints
from wildreid.matching.correspondences import verified_correspondences
from wildreid.matching.methods import ImageSet, build_method
from wildreid.matching.one_vs_many import DescriptorIndex, OneVsManyMatcher
from wildreid.records import file_sha256

from test_local_features import textured_animal

SIDE = 192  # small images keep ALIKED on one CPU thread well under a second per image


def rotated_and_scaled(image: Image.Image, angle: float, scale: float) -> Image.Image:
    """The same pattern turned by `angle` degrees and shrunk to `scale`, cropped to its central part."""
    array = np.asarray(image)
    height, width = array.shape[:2]
    warp = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    turned = cv2.warpAffine(array, warp, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    margin = int(0.2 * width)
    return Image.fromarray(turned[margin:-margin, margin:-margin])


@pytest.fixture(scope="module")
def aliked() -> LocalFeatureExtractor:
    return LocalFeatureExtractor("aliked", max_keypoints=256, max_side=SIDE).load()


@pytest.fixture(scope="module")
def animals(aliked):
    """Features of five patterned animals and of a rotated (25 deg), scaled (0.8) copy of animal 2."""
    images = [textured_animal(seed, size=240) for seed in range(5)]
    gallery = aliked.extract_many(images, num_workers=1, progress=False)
    query = aliked.extract(rotated_and_scaled(images[2], 25, 0.8))
    return gallery, query


def test_one_vs_many_finds_a_rotated_and_scaled_copy(aliked, animals):
    gallery, query = animals
    matcher = OneVsManyMatcher(k=3, shortlist=3)
    index = matcher.build_index(gallery, aliked.config)
    assert index.config["descriptor"] == "aliked-l2" and index.config["extractor"]["variant"] == "n16"
    scores = matcher.score([query], gallery, index, num_workers=1, progress=False)[0]
    assert int(np.argmax(scores)) == 2, scores
    # Verified: its MAGSAC inliers put it on the verified side (score >= its vote share, 1.0 for the top voter).
    assert scores[2] > 1.0 and np.sort(scores)[-2] < scores[2] - 0.3, scores
    matches, inliers = LocalMatcher(method="aliked").match_pair(query, gallery[2])
    assert inliers >= 15 and inliers > 3 * max(LocalMatcher(method="aliked").match_pair(query, gallery[0])[1], 1)


def test_the_local_method_and_correspondences_take_aliked_features(aliked, animals):
    gallery, query = animals
    queries = ImageSet(np.array(["q"]), np.array(["s"]), local=[query], extractor_config=aliked.config)
    reference = ImageSet(np.arange(5).astype(str), np.array(["s"] * 5), local=gallery, extractor_config=aliked.config)
    for name in ("local", "local-pairwise"):
        assert int(np.argmax(build_method(name, num_workers=1).scores(queries, reference)[0])) == 2
    found = verified_correspondences(LocalMatcher(method="aliked"), query, gallery[2])
    assert found.num_inliers == LocalMatcher(method="aliked").match_pair(query, gallery[2])[1]


def test_features_are_float16_unit_vectors_within_the_budget_and_side(aliked, animals):
    gallery, _ = animals
    item = gallery[0]
    assert item.descriptors.dtype == np.float16 and item.descriptors.shape == (256, 128)
    np.testing.assert_allclose(np.linalg.norm(item.descriptors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert item.keypoints.min() >= 0 and item.keypoints.max() < SIDE
    config = aliked.config
    assert config["max_keypoints"] == 256 and config["max_side"] == SIDE
    assert config["weights_sha256"] == keypoints.ALIKED_SHA256["n16"] and config["weights"] is None
    tiny = LocalFeatureExtractor("aliked", variant="t16", max_keypoints=64, max_side=96)
    tiny = tiny.extract(textured_animal(1, 120))
    assert tiny.descriptors.shape == (64, 64) and tiny.descriptors.dtype == np.float16


def test_cache_round_trip_keeps_float16_and_refuses_another_extractor(tmp_path, aliked, animals):
    gallery, _ = animals
    cache = LocalFeatureCache.from_features([f"i{i}" for i in range(5)], gallery, aliked.config)
    path = cache.save(tmp_path / "cache.npz")
    loaded = LocalFeatureCache.load(path, expected_config=aliked.config)
    np.testing.assert_array_equal(loaded["i3"].descriptors, gallery[3].descriptors)
    assert loaded["i3"].descriptors.dtype == np.float16
    sift = LocalFeatureExtractor(max_keypoints=256, max_side=SIDE).config
    with pytest.raises(ValueError, match="aliked.*sift|sift.*aliked"):
        LocalFeatureCache.load(path, expected_config=sift)
    with pytest.raises(ValueError, match="aliked descriptors.*for sift features"):
        LocalFeatureCache.from_features(["a"], gallery[:1], sift)


def test_a_sift_index_refuses_aliked_queries_naming_both(aliked, animals):
    gallery, query = animals
    sift = LocalFeatureExtractor(max_keypoints=64, max_side=SIDE)
    sift_gallery = sift.extract_many([textured_animal(seed, size=240) for seed in range(2)], num_workers=1,
                                     progress=False)
    index = DescriptorIndex.build(sift_gallery, sift.config)
    with pytest.raises(ValueError) as error:
        OneVsManyMatcher().votes([query], index, progress=False)
    message = str(error.value)
    assert "aliked descriptors" in message and "for sift features" in message and "'method': 'sift'" in message
    with pytest.raises(ValueError, match="aliked descriptors.*for sift features"):
        LocalMatcher(method="sift").score([query], sift_gallery, num_workers=1, progress=False)


def test_weights_with_another_checksum_are_refused_naming_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "aliked-n16.pth"
    data = bytearray((aliked_module.ALIKED_WEIGHTS_DIR / "aliked-n16.pth").read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    expected = keypoints.ALIKED_SHA256["n16"]
    actual = file_sha256(bad)
    # The shipped file replaced by another one: refused at load, naming the file and both checksums.
    monkeypatch.setattr(aliked_module, "ALIKED_WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError) as error:
        LocalFeatureExtractor("aliked").load()
    assert str(bad) in str(error.value) and expected in str(error.value) and actual in str(error.value)
    # Other weights given explicitly are used, with their own checksum recorded...
    other = LocalFeatureExtractor("aliked", weights=bad)
    assert other.config["weights_sha256"] == actual and other.config["weights"] == str(bad.resolve())
    # ...but a config recorded with the shipped weights' checksum refuses them.
    with pytest.raises(ValueError, match=f"{bad}.*{actual}.*{expected}"):
        LocalFeatureExtractor("aliked", weights=bad, weights_sha256=expected).load()


def test_override_weights_load_and_settings_are_checked(tmp_path):
    copy = tmp_path / "mine.pth"
    shutil.copy(aliked_module.ALIKED_WEIGHTS_DIR / "aliked-t16.pth", copy)
    extractor = LocalFeatureExtractor("aliked", variant="t16", weights=copy, max_keypoints=32, max_side=64).load()
    assert extractor.config["weights_sha256"] == keypoints.ALIKED_SHA256["t16"]
    assert LocalFeatureExtractor(**extractor.config).config == extractor.config  # a recorded config rebuilds it
    with pytest.raises(ValueError, match="n16 weights"):  # the wrong variant's file
        LocalFeatureExtractor("aliked", variant="n16", weights=copy).load()
    with pytest.raises(ValueError, match="unknown ALIKED variant"):
        LocalFeatureExtractor("aliked", variant="n32")
    with pytest.raises(ValueError, match="ALIKED settings"):
        LocalFeatureExtractor("sift", variant="n16")
    with pytest.raises(ValueError, match="shipped aliked-n16.pth"):
        LocalFeatureExtractor("aliked", weights_sha256="0" * 64)


# ---------------------------------------------------------------------------------------------- galleries


@pytest.fixture(scope="module")
def aliked_gallery(tmp_path_factory):
    from test_cli import save_model
    from test_gallery_methods import DATA
    from wildreid.identification.cli import main

    root = tmp_path_factory.mktemp("aliked_gallery")
    model = save_model(root / "model", seed=0)
    common = ["--model", str(model), "--datasets", f"{DATA}:train", "--num_workers", "0", "--max_keypoints", "64",
              "--local_max_side", "128"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threads, "available_cores", lambda: 1)  # keypoints in this process: no pool to start
        assert main(["index", *common, "--output", str(root / "aliked"), "--local-features", "aliked",
                     "--aliked_variant", "t16", "--aliked_scales", "1", "0.5"]) == 0
        assert main(["index", *common, "--output", str(root / "sift"), "--local-features"]) == 0
        yield root


def test_index_records_aliked_and_identify_extracts_queries_the_same_way(aliked_gallery, tmp_path, monkeypatch):
    import json

    from wildreid.identification import Gallery
    from wildreid.identification.cli import main
    from test_gallery_methods import DATA

    gallery = Gallery.load(aliked_gallery / "aliked")
    config = gallery.local_features_config
    assert config["method"] == "aliked" and config["variant"] == "t16" and config["max_side"] == 128
    assert config["scales"] == [1.0, 0.5]
    assert config["weights_sha256"] == keypoints.ALIKED_SHA256["t16"] and config["max_keypoints"] == 64
    assert Gallery.load(aliked_gallery / "sift").local_features_config["method"] == "sift"  # bare --local-features
    output = tmp_path / "matches.json"
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    assert main(["identify", "--gallery", str(aliked_gallery / "aliked"), "--datasets", f"{DATA}:test",
                 "--method", "local", "--output", str(output), "--num_workers", "0"]) == 0
    assert {r["method"] for r in json.loads(output.read_text())["results"]} == {"local"}


def test_calibrate_auto_and_identify_by_fusion_work_off_an_aliked_gallery(aliked_gallery, tmp_path, monkeypatch):
    import json

    from wildreid.identification import Gallery
    from wildreid.identification.cli import main
    from test_gallery_methods import DATA

    folder = tmp_path / "gallery"
    shutil.copytree(aliked_gallery / "aliked", folder)
    shutil.copytree(aliked_gallery / "model", tmp_path / "model")  # the gallery names its model relatively
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    assert main(["calibrate", "--gallery", str(folder), "--datasets", f"{DATA}:train", "--method", "auto",
                 "--local-features", "--num_workers", "0"]) == 0  # kept ALIKED, not weighed against SIFT
    choices = Gallery.load(folder).calibration["method_choice"]
    assert choices and all(set(c["validation"]) == {"global", "local", "fusion"} for c in choices.values())
    for method in ("fusion", "auto"):
        output = tmp_path / f"{method}.json"
        assert main(["identify", "--gallery", str(folder), "--datasets", f"{DATA}:test", "--method", method,
                     "--output", str(output), "--num_workers", "0"]) == 0
        results = json.loads(output.read_text())["results"]
        assert results and all(r["method"] == (method if method == "fusion" else choices[r["query"].split("/")[0]]
                                               ["method"]) for r in results)


def test_a_sift_gallery_refuses_aliked_query_features_naming_both(aliked_gallery, aliked, animals):
    from wildreid.identification import Gallery
    from wildreid.identification.gallery_methods import GalleryScorer

    folder = aliked_gallery / "sift"
    gallery = Gallery.load(folder)
    scorer = GalleryScorer(gallery, folder, "local")
    _, query = animals
    with pytest.raises(ValueError) as error:
        scorer.identify(gallery.embeddings[:1], [query], [None], ["q"])
    message = str(error.value)
    assert "local features are sift" in message and "query 0 have aliked descriptors" in message


def test_index_refuses_aliked_settings_without_aliked(aliked_gallery, tmp_path, capsys):
    from test_gallery_methods import DATA
    from wildreid.identification.cli import main

    with pytest.raises(SystemExit):
        main(["index", "--model", str(aliked_gallery / "model"), "--datasets", f"{DATA}:train", "--output",
              str(tmp_path / "x"), "--local-features", "--aliked_variant", "t16"])
    assert "--local-features aliked" in capsys.readouterr().err


def test_evaluate_local_takes_aliked(monkeypatch):
    from wildreid.evaluation.runner import EvaluationRequest, run_evaluation

    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    data = "synthetic[n_species=1,n_identities=5,images_per_identity=3,image_size=96,seed=4]"
    results = run_evaluation(EvaluationRequest(datasets=[f"{data}:train"], method="local", num_workers=0,
                                               local_features="aliked", aliked_variant="t16", max_keypoints=48,
                                               local_max_side=96))
    assert results["model"] == "local features (ALIKED)"
    config = results["local_features"]
    assert config["method"] == "aliked" and config["variant"] == "t16" and config["max_side"] == 96
    assert 0 <= results["species"]["synthetic-stripes"]["top1"] <= 1
    with pytest.raises(ValueError, match="--aliked_variant and --aliked_scales need --local_features aliked"):
        run_evaluation(EvaluationRequest(datasets=[f"{data}:train"], method="local", aliked_variant="t16"))


def test_the_review_app_draws_aliked_correspondences(aliked):
    from wildreid.identification.review.drawing import draw_correspondences, side_by_side

    first = textured_animal(2, size=240)
    second = rotated_and_scaled(first, 25, 0.8)
    found = verified_correspondences(LocalMatcher(method="aliked"), aliked.extract(second), aliked.extract(first))
    assert found.num_inliers >= 15
    picture = draw_correspondences(second, first, found, max_side=aliked.max_side, upscale=aliked.upscale)
    plain = side_by_side(second, first)
    assert picture.shape == plain.shape and np.abs(picture.astype(int) - plain).max() > 100  # lines were drawn


def test_multi_scale_aliked_splits_the_budget_across_levels_in_one_frame():
    extractor = LocalFeatureExtractor("aliked", variant="t16", max_keypoints=90, max_side=160, scales=(1.0, 0.5, 0.25))
    assert extractor.config["scales"] == [1.0, 0.5, 0.25]
    features = extractor.extract(textured_animal(3, 200))
    assert 60 <= len(features) <= 90 and features.descriptors.dtype == np.float16
    assert features.keypoints.min() >= -0.5 and features.keypoints.max() < 160
    single = LocalFeatureExtractor("aliked", variant="t16", max_keypoints=90, max_side=160, scales=(1.0,))
    assert len(single.extract(textured_animal(3, 200))) == 90
    with pytest.raises(ValueError, match="scales"):
        LocalFeatureExtractor("aliked", scales=(1.0, 1.5))


def test_the_fast_cpu_kernels_keep_the_keypoints_and_descriptors_of_kornias_module(aliked, animals):
    """The loaded module's SELU gates and deformable convolutions are replaced (for speed); kornia's own module,
    untouched, finds the same keypoints with the same descriptors on a patterned image."""
    import torch
    from kornia.feature import ALIKED
    from kornia.feature.aliked.aliked import DeformableConv2d

    model = aliked._get_detector()
    assert not any(isinstance(module, (torch.nn.SELU, DeformableConv2d)) for module in model.modules())
    reference = ALIKED(model_name="aliked-n16", max_num_keypoints=256, detection_threshold=0.0)
    reference.load_state_dict(model.state_dict(), strict=False)
    pixels = torch.from_numpy(np.array(textured_animal(4, size=SIDE))).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        ours, theirs = model(pixels.contiguous(memory_format=torch.channels_last))[0], reference.eval()(pixels)[0]
    order_ours = np.lexsort(ours.keypoints.numpy().T)
    order_theirs = np.lexsort(theirs.keypoints.numpy().T)
    np.testing.assert_allclose(ours.keypoints.numpy()[order_ours], theirs.keypoints.numpy()[order_theirs], atol=1e-3)
    np.testing.assert_allclose(ours.descriptors.numpy()[order_ours], theirs.descriptors.numpy()[order_theirs],
                               atol=1e-4)
    values = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(aliked_module._fast_selu_module()(values.clone()), torch.selu(values))


def test_the_onnx_exportable_copy_computes_the_same_dense_maps_with_kornias_deformable_convolutions(aliked):
    """torchvision's deformable convolution has no ONNX export: the copy bench/aliked_onnx_speed.py exports puts
    kornia's back, leaves the loaded module as it was, and computes the same maps."""
    import torch
    from kornia.feature.aliked.aliked import DeformableConv2d

    model = aliked._get_detector()
    exportable = aliked_module.onnx_exportable(model)
    assert sum(isinstance(module, DeformableConv2d) for module in exportable.modules()) == 4
    assert not any(isinstance(module, DeformableConv2d) for module in model.modules())
    pixels = torch.from_numpy(np.array(textured_animal(5, size=96))).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        ours = model.extract_dense_map(pixels.contiguous(memory_format=torch.channels_last))
        theirs = exportable.extract_dense_map(pixels)
    for mine, other in zip(ours, theirs):
        torch.testing.assert_close(mine, other, atol=1e-5, rtol=1e-4)
