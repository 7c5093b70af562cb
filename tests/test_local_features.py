"""Local features: same individual beats different individual, cache round trip without pickle,
shortlists, parallel scoring and per-file failure reporting."""
from __future__ import annotations


import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from wildreid.matching import LocalFeatureCache, LocalFeatureExtractor, LocalFeatures, LocalMatcher


def textured_animal(seed: int, size: int = 360) -> Image.Image:
    """A synthetic 'coat pattern': random blobs and strokes on smooth noise (distinct per seed)."""
    rng = np.random.default_rng(seed)
    canvas = cv2.GaussianBlur(rng.integers(60, 200, (size, size), dtype=np.uint8), (0, 0), 6)
    for _ in range(60):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(4, 22, 2))
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, int(rng.integers(0, 255)), -1)
    for _ in range(25):
        p, q = rng.integers(0, size, (2, 2))
        cv2.line(canvas, tuple(int(v) for v in p), tuple(int(v) for v in q),
                 int(rng.integers(0, 255)), int(rng.integers(1, 4)))
    return Image.fromarray(canvas).convert("RGB")


def second_view(image: Image.Image) -> Image.Image:
    """Another photo of the same animal: shifted crop window, small rotation, brighter."""
    rotated = image.rotate(7, resample=Image.BICUBIC)
    return ImageEnhance.Brightness(rotated.crop((40, 30, 330, 340))).enhance(1.25)


@pytest.fixture(scope="module")
def extractor() -> LocalFeatureExtractor:
    return LocalFeatureExtractor(max_keypoints=256, max_side=320)


@pytest.fixture(scope="module")
def features(extractor):
    """[animal 0 view 1, animal 0 view 2, animal 1, animal 2]."""
    first = textured_animal(0)
    images = [first.crop((0, 0, 300, 320)), second_view(first), textured_animal(1), textured_animal(2)]
    return extractor.extract_many(images, num_workers=1, progress=False)


@pytest.mark.parametrize("geometry", ["homography", "none"])
def test_same_individual_scores_higher_than_different(features, geometry):
    matcher = LocalMatcher(geometry=geometry)
    scores = matcher.score(features[:1], features[1:], num_workers=1, progress=False)[0]
    same, different = scores[0], scores[1:].max()
    assert same >= 20, scores
    assert same > 4 * max(different, 1.0), scores


def test_geometric_verification_never_adds_matches(features):
    matches, inliers = LocalMatcher().match_pair(features[0], features[1])
    assert 0 < inliers <= matches
    raw, same_again = LocalMatcher(geometry="none").match_pair(features[0], features[1])
    assert raw == same_again == matches


@pytest.mark.parametrize("method", ["orb", pytest.param("akaze", marks=pytest.mark.skipif(
    not hasattr(cv2, "AKAZE_create"), reason="AKAZE is not in this OpenCV build (contrib since OpenCV 5)"))])
def test_binary_descriptors_also_separate_individuals(method):
    first = textured_animal(0)
    images = [first.crop((0, 0, 300, 320)), second_view(first), textured_animal(1)]
    feats = LocalFeatureExtractor(method=method, max_keypoints=256, max_side=320).extract_many(
        images, num_workers=1, progress=False)
    scores = LocalMatcher(method=method).score(feats[:1], feats[1:], num_workers=1, progress=False)[0]
    assert scores[0] > 2 * max(scores[1], 1.0), (method, scores)


def test_extract_respects_limits_and_accepts_arrays(extractor):
    image = textured_animal(3, size=800)
    from_pil = extractor.extract(image)
    from_array = extractor.extract(np.asarray(image))
    from_float = extractor.extract(np.asarray(image).astype(np.float32) / 255.0)
    assert 0 < len(from_pil) <= 256
    assert from_pil.descriptors.dtype == np.uint8 and from_pil.descriptors.shape[1] == 128
    assert from_pil.keypoints.max() < 320  # resized so the longest side is max_side
    np.testing.assert_array_equal(from_pil.descriptors, from_array.descriptors)
    assert len(from_float) > 0
    blank = extractor.extract(np.full((50, 50), 128, np.uint8))
    assert len(blank) == 0
    with pytest.raises(ValueError, match="shape"):
        extractor.extract(np.zeros((4, 4, 2), np.uint8))


def test_small_crops_are_upscaled_unless_disabled():
    small = textured_animal(4, size=120)
    assert LocalFeatureExtractor(max_side=320).extract(small).keypoints.max() > 150
    assert LocalFeatureExtractor(max_side=320, upscale=False).extract(small).keypoints.max() < 120


def test_empty_features_score_zero(features):
    empty = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
    scores = LocalMatcher().score([empty, features[0]], [features[1], empty], num_workers=1, progress=False)
    assert scores[0].tolist() == [0.0, 0.0] and scores[1, 1] == 0.0


def test_shortlist_scores_only_candidates_and_matches_full(features):
    matcher = LocalMatcher()
    full = matcher.score(features, features, num_workers=1, progress=False)
    candidates = np.array([[1, 3], [0, -1], [3, 3], [-1, -1]])  # -1 pads short rows
    shortlisted = matcher.score(features, features, candidates, num_workers=1, progress=False)
    assert shortlisted.dtype == np.float32
    scored = np.zeros_like(full, dtype=bool)
    scored[0, [1, 3]] = scored[1, 0] = scored[2, 3] = True
    np.testing.assert_array_equal(shortlisted[scored], full[scored])
    assert np.all(np.isneginf(shortlisted[~scored]))
    with pytest.raises(ValueError, match="index 9"):
        matcher.score(features, features, [[9]] * 4, num_workers=1, progress=False)


def test_score_within_is_the_mirrored_upper_triangle(features):
    matcher = LocalMatcher()
    full = matcher.score(features, features, num_workers=1, progress=False)
    within = matcher.score_within(features, num_workers=1, progress=False)
    upper = np.triu_indices(len(features), 1)
    np.testing.assert_array_equal(within[upper], full[upper])
    np.testing.assert_array_equal(within, within.T)
    assert np.all(np.isneginf(np.diag(within)))


def test_parallel_scoring_equals_serial(features):
    matcher = LocalMatcher(geometry="none")
    serial = matcher.score(features, features, num_workers=1, progress=False)
    parallel = matcher.score(features, features, num_workers=2, progress=False)
    np.testing.assert_array_equal(serial, parallel)


def test_wrong_descriptor_family_is_refused(features):
    with pytest.raises(ValueError, match="expected uint8 \\(N, 32\\)"):
        LocalMatcher(method="orb").score(features[:1], features, num_workers=1, progress=False)


def test_cache_round_trip_without_pickle(tmp_path, extractor, features):
    cache = LocalFeatureCache.from_features(["a", "b", "c", "d"], features, extractor.config)
    path = cache.save(tmp_path / "local_features.npz")
    loaded = LocalFeatureCache.load(path, expected_config=extractor.config)
    assert loaded.keys() == ["a", "b", "c", "d"]
    for key, original in zip("abcd", features):
        np.testing.assert_array_equal(loaded[key].keypoints, original.keypoints)
        np.testing.assert_array_equal(loaded[key].descriptors, original.descriptors)
    with np.load(path, allow_pickle=False) as data:  # plain arrays only
        assert all(data[name].dtype != object for name in data.files)
    with pytest.raises(KeyError, match="'zz'"):
        loaded.get_many(["a", "zz"])
    other = LocalFeatureExtractor(max_keypoints=100).config
    with pytest.raises(ValueError, match="cache was made with"):
        LocalFeatureCache.load(path, expected_config=other)


def test_cache_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, format_version=np.array(1), config=np.array("{}"), keys=np.array([{"x": 1}], dtype=object),
             offsets=np.zeros(2, np.int64), keypoints=np.zeros((0, 2), np.float32),
             descriptors=np.zeros((0, 128), np.uint8))
    with pytest.raises(ValueError, match="evil.npz"):
        LocalFeatureCache.load(path)


def test_extract_paths_reports_and_skips_unreadable_files(tmp_path, extractor):
    good = tmp_path / "good.png"
    textured_animal(5).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 definitely not a jpeg")
    missing = tmp_path / "missing.png"
    features, failures = extractor.extract_paths([good, corrupt, missing, good],
                                                 bboxes=[None, None, None, [10, 10, 200, 150]],
                                                 num_workers=1, progress=False)
    assert [f is None for f in features] == [False, True, True, False]
    assert [f.file for f in failures] == [str(corrupt), str(missing)]
    assert all(f.reason for f in failures)
    assert len(features[3]) > 0 and features[3].keypoints[:, 0].max() <= 320
