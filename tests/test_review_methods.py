"""The review app ranks with the gallery's methods as `wildreid identify` does (`GalleryScorer`): fusion and
local give the same individuals in the same order; a photo accepted in the app is found by local queries at
once, after a restart and by `identify`, through a descriptor index extended and saved atomically; fusion
without a recorded fit is refused at start; a photo without keypoints gets the global answer and says so."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from wildreid.identification import Gallery
from wildreid.identification.gallery_methods import NO_KEYPOINTS_NOTE, GalleryScorer
from wildreid.identification.local_retrieval import load_descriptor_index
from wildreid.identification.review import ReviewSession, load_model_embedder
from wildreid.identification.review.demo_gallery import build_demo_gallery, write_images
from wildreid.identification.review.ui import describe_candidate, describe_suggestion
from wildreid.matching import LocalFeatureExtractor
from wildreid.matching.one_vs_many import DescriptorIndex


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The demo gallery (its recorded choice: fusion) and one unseen photo of each individual."""
    return build_demo_gallery(tmp_path_factory.mktemp("methods"), held_out_per_identity=1)


@pytest.fixture(scope="module")
def embedder(built):
    return load_model_embedder(str(built["model"]))


@pytest.fixture
def gallery_dir(built, tmp_path):
    shutil.copytree(built["gallery"], tmp_path / "gallery")
    return tmp_path / "gallery"


def identify_answer(gallery_dir, method: str, embedder, session: ReviewSession, photo) -> list[tuple[str, float]]:
    """(identity, score) of the top candidates `wildreid identify --method` gives one query photo."""
    gallery = Gallery.load(gallery_dir)
    crop = session.read_photos([photo])[0].crop  # the crop the app scores
    features = [LocalFeatureExtractor(**gallery.local_features_config).extract(crop)]
    [result] = GalleryScorer(gallery, gallery_dir, method).identify(embedder[0]([crop]), features, [None], ["q"],
                                                                    top_k=session.top_k)
    assert result.method == method
    return [(c.identity, c.score) for c in result.candidates]


@pytest.mark.parametrize("method", ["fusion", "local"])
def test_the_app_ranks_like_identify(built, embedder, gallery_dir, method):
    session = ReviewSession(gallery_dir, *embedder, method=method, top_k=3)
    for photo in built["queries"]:
        proposal = session.propose(session.read_photos([photo]))
        assert proposal.ranking.method == method and proposal.ranking.note is None
        shown = [(c.identity, c.score) for c in proposal.candidates]
        answered = identify_answer(gallery_dir, method, embedder, session, photo)
        assert [identity for identity, _ in shown] == [identity for identity, _ in answered]
        np.testing.assert_allclose([score for _, score in shown], [score for _, score in answered])
    best = proposal.candidates[0]
    text = describe_candidate(1, best)
    assert f"method: {method}" in text and "verified local matches" in text and "cosine" in text
    assert ("fused score" if method == "fusion" else "local score") in text
    if method == "fusion":
        assert 0.0 <= best.probability <= 1.0
    # The new-individual suggestion stays on the best cosine and the calibrated cosine threshold.
    ranking = proposal.ranking
    assert ranking.suggest_new == (ranking.best_cosine < ranking.threshold) and "cosine" in describe_suggestion(proposal)


def test_an_accepted_photo_is_found_by_local_queries_at_once_after_a_restart_and_by_identify(embedder, gallery_dir,
                                                                                           tmp_path):
    newcomer = write_images(tmp_path / "new", 2, 1, seed=99)[0][0]  # an animal the gallery has never seen
    session = ReviewSession(gallery_dir, *embedder, method="local", top_k=3)
    before = len(session.gallery)
    proposal = session.propose(session.read_photos([newcomer]))
    assert "zebra/Newcomer" not in [c.identity for c in proposal.candidates]
    [added] = session.decide(proposal.id, "new", name="Newcomer")["added_image_ids"]

    def top(reviewer: ReviewSession):
        best = reviewer.propose(reviewer.read_photos([newcomer])).candidates[0]
        return best.identity, best.image_id

    assert top(session) == ("zebra/Newcomer", added)
    assert session.scorer.descriptor_index().num_images == len(session.gallery) == before + 1
    assert top(ReviewSession(gallery_dir, *embedder, method="local", top_k=3)) == ("zebra/Newcomer", added)
    assert identify_answer(gallery_dir, "local", embedder, session, newcomer)[0][0] == "zebra/Newcomer"

    # Saved in the revision: the index covers every gallery image, as the same index built from scratch would.
    gallery = Gallery.load(gallery_dir)
    manifest = json.loads((gallery_dir / "gallery.json").read_text())
    saved, image_ids = DescriptorIndex.from_npz(gallery_dir / manifest["files"]["descriptor_index"]["name"],
                                                gallery.local_features_config)
    assert image_ids == gallery.metadata["image_id"].tolist() and image_ids[-1] == added
    rebuilt = DescriptorIndex.build(Gallery.load_local_features(gallery_dir).get_many(image_ids),
                                    gallery.local_features_config)
    np.testing.assert_array_equal(saved.owners, rebuilt.owners)

    session.undo()  # the index loses the photo again
    assert "zebra/Newcomer" not in [c.identity for c in session.propose(session.read_photos([newcomer])).candidates]
    index, _ = load_descriptor_index(gallery_dir, Gallery.load(gallery_dir).metadata["image_id"].tolist(),
                                     gallery.local_features_config)
    assert index.num_images == before


def test_an_interrupted_index_write_leaves_the_saved_gallery_and_index_as_they_were(built, embedder, gallery_dir,
                                                                                   monkeypatch):
    session = ReviewSession(gallery_dir, *embedder, method="fusion", top_k=3)
    revision, image_ids = session.revision, session.gallery.metadata["image_id"].tolist()

    def torn_write(self, path, ids):
        path.write_bytes(b"half an index")
        raise OSError("disk full")

    monkeypatch.setattr(DescriptorIndex, "to_npz", torn_write)
    proposal = session.propose(session.read_photos([built["queries"][0]]))
    with pytest.raises(OSError, match="disk full"):
        session.decide(proposal.id, "same", identity=proposal.candidates[0].identity)
    monkeypatch.undo()
    gallery = Gallery.load(gallery_dir)
    assert gallery.metadata["image_id"].tolist() == image_ids and session.revision == revision
    index, _ = load_descriptor_index(gallery_dir, image_ids, gallery.local_features_config)
    assert index.num_images == len(image_ids) == session.scorer.descriptor_index().num_images
    # The session reloaded what is on disk and decides again.
    assert session.decide(proposal.id, "same", identity=proposal.candidates[0].identity)["added_image_ids"]


def test_fusion_without_a_recorded_fit_is_refused_at_start(embedder, gallery_dir):
    gallery = Gallery.load(gallery_dir)
    del gallery.calibration["method_choice"]
    gallery.save(gallery_dir, local_features=Gallery.load_local_features(gallery_dir), overwrite=True)
    with pytest.raises(ValueError) as error:
        ReviewSession(gallery_dir, *embedder, method="fusion")
    message = str(error.value)
    assert str(gallery_dir) in message and "wildreid calibrate" in message and "--method fusion" in message
    assert "zebra" in message
    ReviewSession(gallery_dir, *embedder, method="local")  # local needs no fit


def test_a_photo_without_keypoints_gets_the_global_answer_and_says_so(built, embedder, gallery_dir, tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(blank)
    fusion = ReviewSession(gallery_dir, *embedder, method="fusion", top_k=3)
    proposal = fusion.propose(fusion.read_photos([blank]))
    assert proposal.ranking.method == "global" and proposal.ranking.note == NO_KEYPOINTS_NOTE
    assert {c.method for c in proposal.candidates} == {"global"}
    assert NO_KEYPOINTS_NOTE in describe_suggestion(proposal)
    plain = ReviewSession(gallery_dir, *embedder, method="global", top_k=3)
    assert [c.identity for c in proposal.candidates] == \
        [c.identity for c in plain.propose(plain.read_photos([blank])).candidates]

    # Beside a photo with keypoints, it is left out of the local evidence, and the note says which photo.
    photo = built["queries"][1]
    mixed = fusion.propose(fusion.read_photos([blank, photo]))
    alone = fusion.propose(fusion.read_photos([photo]))
    assert mixed.ranking.method == "fusion" and "photo(s) 1 have no keypoints" in mixed.ranking.note
    assert [(c.identity, c.photo) for c in mixed.candidates] == [(c.identity, 1) for c in alone.candidates]


def test_demo_gallery_fits_its_method_choice_on_at_most_method_fit_images(tmp_path):
    built = build_demo_gallery(tmp_path, n_identities=4, images_per_identity=3, method_fit_images=6)
    gallery = Gallery.load(built["gallery"])
    assert len(gallery) == 12
    assert gallery.calibration["method_choice"]["zebra"]["validation_queries"] == 6
