"""One-vs-many local retrieval (LNBNN), union fusion and auto: behaviour on synthetic descriptors."""
import numpy as np
import pytest

from wildreid.matching import LocalFeatures, LocalMatcher
from wildreid.matching.methods import AutoMethod, ImageSet, build_method
from wildreid.matching.one_vs_many import DescriptorIndex, OneVsManyMatcher, shortlist_by_score
from wildreid.matching.selection import leave_one_out_figures
from wildreid.matching.union_fusion import UnionFusion, union_candidates

EXTRACTOR = {"method": "sift", "max_keypoints": 512, "max_side": 512, "upscale": True}


def _descriptors(rng, n):
    return rng.integers(0, 256, size=(n, 128)).astype(np.uint8)


def _jitter(rng, descriptors, amount=3):
    noisy = descriptors.astype(int) + rng.integers(-amount, amount + 1, size=descriptors.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _features(rng, descriptors):
    return LocalFeatures(rng.uniform(0, 500, size=(len(descriptors), 2)).astype(np.float32), descriptors)


def test_lnbnn_ranks_a_distinctive_shared_patch_above_common_texture():
    rng = np.random.default_rng(0)
    texture = _descriptors(rng, 40)  # e.g. grass: in every image, so every neighbour is as close as the crowd
    patch = _descriptors(rng, 8)  # the individual's own mark: in the query and in image 3 only
    gallery = []
    for image in range(6):
        parts = [_jitter(rng, texture), _jitter(rng, texture)] if image == 1 else [_jitter(rng, texture)]
        if image == 3:
            parts.append(_jitter(rng, patch))
        parts.append(_descriptors(rng, 20))
        gallery.append(_features(rng, np.concatenate(parts)))
    query = _features(rng, np.concatenate([_jitter(rng, texture), _jitter(rng, patch), _descriptors(rng, 20)]))
    matcher = OneVsManyMatcher(k=3, shortlist=0)
    votes = matcher.votes([query], matcher.build_index(gallery, EXTRACTOR), progress=False)[0]
    assert np.argmax(votes) == 3
    # The texture matches of image 1 (twice as many) add next to nothing: its votes stay well below image 3's.
    assert votes[3] > 3 * votes[1]


def test_leave_one_out_voting_never_votes_for_the_query_itself():
    rng = np.random.default_rng(1)
    images = [_features(rng, _descriptors(rng, 30)) for _ in range(4)]
    matcher = OneVsManyMatcher(k=2, shortlist=0)
    votes = matcher.votes(images, matcher.build_index(images, EXTRACTOR), leave_one_out=True, progress=False)
    assert np.all(np.diag(votes) == 0)


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_queries_searched_together_vote_as_searched_alone(leave_one_out):
    rng = np.random.default_rng(4)
    images = [_features(rng, _descriptors(rng, 30)) for _ in range(6)] + [_features(rng, _descriptors(rng, 0))]
    queries = images if leave_one_out else [_features(rng, _jitter(rng, image.descriptors)) for image in images]
    index = OneVsManyMatcher().build_index(images, EXTRACTOR)
    votes = {}
    # 1 row: every query searched alone; 50: the 30-keypoint queries split across faiss calls at other offsets.
    for rows in (1, 50):
        matcher = OneVsManyMatcher(k=2, shortlist=0, search_rows=rows)
        votes[rows] = matcher.votes(queries, index, leave_one_out=leave_one_out, progress=False)
    np.testing.assert_allclose(votes[50], votes[1], rtol=1e-5, atol=1e-6)
    assert votes[50][:6].max(axis=1).min() > 0 and not votes[50][6].any()  # the keypoint-less image gets no votes


def test_approximate_index_reports_recall_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    images = [_features(rng, _descriptors(rng, 200)) for _ in range(20)]
    index = DescriptorIndex.build(images, EXTRACTOR, index_type="ivf", nprobe=64)
    assert index.config["index"].startswith("ivf") and "sq8" not in index.config["index"]
    recall = index.recall(index.index.reconstruct_n(0, 100), k=5)  # IVF-Flat holds its vectors: no exact index
    assert 0.5 <= recall <= 1.0
    index.save(tmp_path)
    loaded = DescriptorIndex.load(tmp_path, expected_extractor=EXTRACTOR)
    assert len(loaded) == len(index) and loaded.num_images == 20
    with pytest.raises(ValueError, match="max_keypoints.*256|256.*max_keypoints"):
        DescriptorIndex.load(tmp_path, expected_extractor={**EXTRACTOR, "max_keypoints": 256})


def test_compressed_index_round_trips_finds_each_image_and_reports_recall_against_exact(tmp_path):
    rng = np.random.default_rng(4)
    images = [_features(rng, _descriptors(rng, 60)) for _ in range(20)]
    queries = [_features(rng, _jitter(rng, image.descriptors)) for image in images]
    compressed = DescriptorIndex.build(images, EXTRACTOR, index_type="ivfpq", nprobe=64)
    assert compressed.config["index"].startswith("ivfpq") and "pq64x8" in compressed.config["index"]
    assert compressed.index.code_size == 64  # 128-d RootSIFT in 64 bytes instead of 512
    votes = OneVsManyMatcher(k=2, shortlist=0, index_type="ivfpq").votes(queries, compressed, progress=False)
    assert np.mean(votes.argmax(axis=1) == np.arange(20)) >= 0.9
    exact = DescriptorIndex.build(images, EXTRACTOR, index_type="exact")
    vectors = exact.index.reconstruct_n(0, 200)
    assert 0.3 <= compressed.recall(vectors, k=5, exact=exact) <= 1.0
    with pytest.raises(ValueError, match="needs the exact index"):
        compressed.recall(vectors, k=5)
    compressed.to_npz(tmp_path / "index.npz", [f"image{i}" for i in range(20)])
    loaded, image_ids = DescriptorIndex.from_npz(tmp_path / "index.npz", expected_extractor=EXTRACTOR)
    assert loaded.config == compressed.config and image_ids[3] == "image3"
    np.testing.assert_array_equal(loaded.search(vectors, 5)[1], compressed.search(vectors, 5)[1])
    compressed.save(tmp_path / "saved")
    assert DescriptorIndex.load(tmp_path / "saved").config["index"] == compressed.config["index"]


def test_auto_past_the_exact_limit_keeps_8_bit_codes_that_vote_as_exact(tmp_path):
    rng = np.random.default_rng(7)
    images = [_features(rng, _descriptors(rng, 60)) for _ in range(20)]
    queries = [_features(rng, _jitter(rng, image.descriptors)) for image in images]
    small = DescriptorIndex.build(images, EXTRACTOR, exact_limit=len(images) * 60)
    assert small.config["index"] == "exact"
    coded = DescriptorIndex.build(images, EXTRACTOR, exact_limit=1000, nprobe=64)
    assert ",sq8," in coded.config["index"] and coded.index.code_size == 128  # a byte per RootSIFT component
    matcher = OneVsManyMatcher(k=2, shortlist=0)
    votes, exact_votes = (matcher.votes(queries, index, progress=False) for index in (coded, small))
    np.testing.assert_array_equal(votes.argmax(axis=1), exact_votes.argmax(axis=1))
    vectors = small.index.reconstruct_n(0, 200)
    assert 0.5 <= coded.recall(vectors, k=5, exact=small) <= 1.0
    with pytest.raises(ValueError, match="needs the exact index"):  # its codes are not the descriptors
        coded.recall(vectors, k=5)
    coded.to_npz(tmp_path / "index.npz", [f"image{i}" for i in range(20)])
    loaded, _ = DescriptorIndex.from_npz(tmp_path / "index.npz", expected_extractor=EXTRACTOR)
    assert loaded.config == coded.config
    np.testing.assert_array_equal(loaded.search(vectors, 5)[1], coded.search(vectors, 5)[1])


def test_compressed_codes_follow_the_descriptor_width():
    rng = np.random.default_rng(6)
    tiny = {"method": "aliked", "variant": "t16", "max_keypoints": 512, "max_side": 512, "upscale": True}
    images = [_features(rng, rng.standard_normal((50, 64)).astype(np.float16)) for _ in range(8)]
    index = DescriptorIndex.build(images, tiny, index_type="ivfpq")
    assert index.index.code_size == 32 and index.config["descriptor"] == "aliked-l2"


def test_index_types_are_checked_and_tiny_sets_cannot_train_codes():
    rng = np.random.default_rng(5)
    images = [_features(rng, _descriptors(rng, 30)) for _ in range(3)]
    with pytest.raises(ValueError, match="unknown descriptor index type"):
        DescriptorIndex.build(images, EXTRACTOR, index_type="hnsw")
    with pytest.raises(ValueError, match="unknown descriptor index type"):
        OneVsManyMatcher(index_type="pq")
    with pytest.raises(ValueError, match="at least 256 descriptors"):
        DescriptorIndex.build(images, EXTRACTOR, index_type="ivfpq")
    assert DescriptorIndex.build(images, EXTRACTOR, index_type="ivf").config["index"].startswith("ivf")


def test_adding_images_to_an_index_votes_as_building_it_with_them():
    rng = np.random.default_rng(3)
    images = [_features(rng, _descriptors(rng, 30)) for _ in range(5)] + [_features(rng, _descriptors(rng, 0))]
    queries = [_features(rng, _jitter(rng, image.descriptors)) for image in images[:5]]
    matcher = OneVsManyMatcher(k=2, shortlist=0)
    for exact_limit in (10_000, 50):  # exact, and an inverted file (its centroids trained on the first images)
        grown = DescriptorIndex.build(images[:3], EXTRACTOR, exact_limit=exact_limit, nprobe=64)
        assert grown.config["index"].startswith("exact" if exact_limit > 50 else "ivf")
        grown.add(images[3:])
        built = DescriptorIndex.build(images, EXTRACTOR, exact_limit=10_000)
        assert grown.num_images == 6 and len(grown) == len(built)
        np.testing.assert_array_equal(grown.owners, built.owners)
        votes = matcher.votes(queries, grown, progress=False)
        np.testing.assert_array_equal(votes.argmax(axis=1), np.arange(5))  # each query finds its own image
        if exact_limit > 50:
            np.testing.assert_allclose(votes, matcher.votes(queries, built, progress=False), rtol=1e-5)


def test_union_shortlist_holds_both_inputs_top1():
    global_top = np.array([[4, 1, 2], [0, 3, -1]])
    local_top = np.array([[7, 1, -1], [5, 0, 3]])
    union = union_candidates(global_top, local_top)
    for row, (g, l) in enumerate(zip(global_top, local_top)):
        assert g[0] in union[row] and l[0] in union[row]
        assert set(union[row][union[row] >= 0]) == set(g[g >= 0]) | set(l[l >= 0])


def test_shortlist_skips_unscored_entries():
    scores = np.array([[0.3, -np.inf, 0.9, 0.1]])
    assert shortlist_by_score(scores, 3).tolist() == [[2, 0, 3]]
    assert shortlist_by_score(np.full((1, 3), -np.inf), 2).tolist() == [[-1, -1]]


def _synthetic_set(rng, n_identities=6, per_identity=3, blank=()):
    """Embeddings that separate identities a little and descriptors that separate them a lot."""
    centres = rng.normal(size=(n_identities, 16))
    marks = [_descriptors(rng, 30) for _ in range(n_identities)]
    identities, vectors, local = [], [], []
    for identity in range(n_identities):
        for _ in range(per_identity):
            identities.append(f"sp/{identity}")
            vector = centres[identity] + 1.5 * rng.normal(size=16)
            vectors.append(vector / np.linalg.norm(vector))
            local.append(_features(rng, np.concatenate([_jitter(rng, marks[identity]), _descriptors(rng, 20)])))
    for i in blank:
        local[i] = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
    return ImageSet(np.array(identities, dtype=object), np.array(["sp"] * len(identities), dtype=object),
                    np.array(vectors, dtype=np.float32), local, EXTRACTOR)


def _fusion():
    # Random keypoint positions never fit a homography: count ratio-test matches instead.
    return UnionFusion(shortlist=4, retrieval=OneVsManyMatcher(k=3, shortlist=4, verifier=LocalMatcher(geometry="none")),
                       num_workers=0)


def test_union_fusion_scores_every_candidate_both_ways_and_beats_global():
    rng = np.random.default_rng(3)
    validation, test = _synthetic_set(rng), _synthetic_set(rng)
    fusion = _fusion()
    figures = fusion.fit(validation)
    assert figures["combiner"] in ("mean", "logistic")
    parts = fusion.components(test, None)
    mask = parts.mask(parts.union)
    assert np.all(np.isfinite(parts.inliers[mask]))  # every candidate verified, none imputed
    fused = leave_one_out_figures(fusion.scores(test), test.identities)
    assert fused["top1"] >= leave_one_out_figures(parts.cosine, test.identities)["top1"]


def test_auto_never_sees_test_labels_and_records_its_choice():
    rng = np.random.default_rng(4)
    validation, test = _synthetic_set(rng), _synthetic_set(rng)
    auto = AutoMethod(_fusion())
    figures = auto.fit(validation)
    assert auto.choice in ("global", "local", "fusion") and figures["choice"] == auto.choice
    assert set(figures["validation"]) == {"global", "local", "fusion"}
    scores = auto.scores(test)
    hidden = ImageSet(np.array(["?"] * len(test), dtype=object), test.species, test.embeddings, test.local, EXTRACTOR)
    np.testing.assert_array_equal(auto.scores(hidden), scores)


def test_auto_before_fit_refuses():
    with pytest.raises(RuntimeError, match="before fit"):
        AutoMethod(_fusion()).scores(_synthetic_set(np.random.default_rng(5)))


@pytest.mark.parametrize("method", ["fusion", "auto"])
def test_query_without_keypoints_gets_the_global_answer(method):
    rng = np.random.default_rng(6)
    validation, test = _synthetic_set(rng), _synthetic_set(rng, blank=(0,))
    scorer = build_method(method, shortlist=4, num_workers=0)
    scorer.fusion = _fusion()
    scorer.fit(validation)
    if method == "auto":
        scorer.choice = "local"  # the case where a blind query would otherwise get a row of ties
    scores = scorer.scores(test)
    cosine = test.embeddings[0] @ test.embeddings.T
    ranked = np.argsort(-scores[0], kind="stable")[:3]
    assert ranked.tolist() == np.argsort(-np.where(np.arange(len(test)) == 0, -np.inf, cosine), kind="stable")[:3].tolist()


def test_validation_figures_match_the_evaluation_metrics():
    from wildreid.evaluation.metrics import retrieval_metrics_from_similarity

    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(8), 3).astype(object)
    scores = rng.normal(size=(24, 24))
    ours = leave_one_out_figures(scores, labels)
    reference = retrieval_metrics_from_similarity(scores, labels, leave_one_out=True)
    assert ours["top1"] == pytest.approx(reference["top1"]) and ours["map"] == pytest.approx(reference["map"])


def test_validation_figures_without_same_encounter_pairs_match_the_evaluation_metrics():
    from wildreid.evaluation.metrics import retrieval_metrics_from_similarity

    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(8), 3).astype(object)
    groups = np.array([f"{label}-{i % 2}" if label % 3 else None for i, label in enumerate(labels)], dtype=object)
    scores = rng.normal(size=(24, 24))
    ours = leave_one_out_figures(scores, labels, groups)
    reference = retrieval_metrics_from_similarity(scores, labels, leave_one_out=True, query_groups=groups,
                                                  gallery_groups=groups)
    assert ours["top1"] == pytest.approx(reference["top1"]) and ours["map"] == pytest.approx(reference["map"])
    assert ours != leave_one_out_figures(scores, labels)  # the exclusion changed something
    # a1 and a2 are one sighting and find each other first; across sightings b outscores every other a.
    hand = np.array([[0, 9, 1, 5], [9, 0, 1, 5], [1, 1, 0, 5], [5, 5, 5, 0]], dtype=float)
    ids, sightings = np.array(["a", "a", "a", "b"], dtype=object), np.array(["s1", "s1", "s2", None], dtype=object)
    assert leave_one_out_figures(hand, ids)["top1"] == pytest.approx(2 / 3)
    assert leave_one_out_figures(hand, ids, sightings)["top1"] == pytest.approx(0 / 3)


def test_fusion_fitted_without_same_encounter_pairs_says_so_and_needs_re_sightings():
    rng = np.random.default_rng(9)
    validation = _synthetic_set(rng)
    validation.encounters = np.array([f"{identity}-{i % 3 == 0}" for i, identity in enumerate(validation.identities)],
                                     dtype=object)
    plain, strict = _fusion().fit(validation), _fusion().fit(validation, exclude_same_encounter=True)
    assert plain["exclude_same_encounter"] is False and strict["exclude_same_encounter"] is True
    assert strict["validation_pairs"] < plain["validation_pairs"]
    fitted = _fusion()
    fitted.fit(validation, exclude_same_encounter=True)
    parts = fitted.components(validation, None)
    expected = leave_one_out_figures(parts.cosine, validation.identities, validation.encounters)
    assert strict["validation"]["global"] == pytest.approx(expected)
    validation.encounters = np.array([str(identity) for identity in validation.identities], dtype=object)
    with pytest.raises(ValueError, match="no two images of one individual from different encounters"):
        _fusion().fit(validation, exclude_same_encounter=True)
