"""Review decisions without a browser: candidates with their evidence, "same as", "new individual",
"skip", undo, the audit log and the gallery on disk; the correspondences behind the explanation pictures."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from wildreid.identification import Gallery
from wildreid.identification.review import ReviewSession, load_model_embedder
from wildreid.identification.review.audit import AuditLog, gallery_revision
from wildreid.identification.review.demo_gallery import build_demo_gallery
from wildreid.matching import LocalFeatureExtractor, LocalMatcher
from wildreid.matching.correspondences import feature_frame_scale, verified_correspondences


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_demo_gallery(tmp_path_factory.mktemp("review"))


@pytest.fixture(scope="module")
def embedder(built):
    return load_model_embedder(str(built["model"]))


@pytest.fixture
def session(built, embedder, tmp_path):
    """A fresh copy of the gallery per test, so decisions do not leak between tests; method auto, which on
    the demo gallery is its recorded choice, fusion."""
    gallery = tmp_path / "gallery"
    shutil.copytree(built["gallery"], gallery)
    return ReviewSession(gallery, *embedder, top_k=3)


def test_gallery_photo_finds_its_individual_with_verified_matches(session, built, embedder):
    photo = built["images"][4]  # individual 001's second photo
    session = ReviewSession(session.gallery_dir, *embedder, top_k=3, method="global")
    proposal = session.propose(session.read_photos([photo]))
    assert [c.method for c in proposal.candidates] == ["global"] * 3
    assert len({c.identity for c in proposal.candidates}) == 3
    best = proposal.candidates[0]
    assert best.identity == "zebra/001" and best.score == pytest.approx(1.0, abs=1e-5)
    assert best.probability is not None and proposal.ranking.threshold is not None
    assert proposal.ranking.suggest_new is False
    # The same image on both sides: every keypoint is a verified match, far more than for other individuals.
    assert best.verified_matches > 4 * max(c.verified_matches for c in proposal.candidates[1:])
    assert best.pair.shape[0] == best.explanation.shape[0] == 256 and best.explanation.shape[2] == 3
    assert not np.array_equal(best.pair, best.explanation)  # lines and shading were drawn


def test_same_as_adds_the_query_to_the_gallery_and_logs_it(session, built):
    before = Gallery.load(session.gallery_dir)
    revision = gallery_revision(session.gallery_dir)
    proposal = session.propose(session.read_photos(built["images"][:2]))
    record = session.decide(proposal.id, "same", identity="zebra/002")

    after = Gallery.load(session.gallery_dir)
    assert len(after) == len(before) + 2
    added = after.metadata.iloc[-2:]
    assert added["identity"].tolist() == ["zebra/002"] * 2 and added["image_id"].tolist() == record["added_image_ids"]
    np.testing.assert_allclose(after.embeddings[-2:], proposal.embeddings, atol=1e-6)
    cache = Gallery.load_local_features(session.gallery_dir)
    assert all(image_id in cache for image_id in record["added_image_ids"])
    assert all(open(path, "rb").read() == open(src, "rb").read()  # stored copies of the uploads
               for path, src in zip(added["path"], built["images"][:2]))

    lines = AuditLog(session.review_dir / "audit.jsonl").records()
    assert len(lines) == 1 and lines[0] == json.loads(json.dumps(record, default=str))
    sha = hashlib.sha256(open(built["images"][0], "rb").read()).hexdigest()
    assert lines[0]["query"][0]["sha256"] == sha
    assert [c["identity"] for c in lines[0]["candidates"]] == [c.identity for c in proposal.candidates]
    assert lines[0]["gallery_revision"] == revision != lines[0]["gallery_revision_after"]
    assert lines[0]["model"]["revision"] == session.model_tag.revision
    with pytest.raises(ValueError, match="already decided"):
        session.decide(proposal.id, "skip")


def test_new_individual_then_undo_restores_the_gallery(session, built):
    before = Gallery.load(session.gallery_dir)
    proposal = session.propose(session.read_photos([built["images"][0]]), species="zebra")
    record = session.decide(proposal.id, "new", name="Stripes 7")
    assert record["identity"] == "zebra/Stripes 7"
    assert "zebra/Stripes 7" in Gallery.load(session.gallery_dir).identities

    undone = session.undo()
    restored = Gallery.load(session.gallery_dir)
    assert undone["undoes"] == record["id"] and undone["removed_image_ids"] == record["added_image_ids"]
    assert restored.metadata["image_id"].tolist() == before.metadata["image_id"].tolist()
    np.testing.assert_array_equal(restored.embeddings, before.embeddings)
    assert len(Gallery.load_local_features(session.gallery_dir)) == len(before)
    assert [line["decision"] for line in session.audit.records()] == ["new", "undo"]
    # The undone query is open again and can be decided differently.
    assert session.decide(proposal.id, "skip")["decision"] == "skip"
    assert len(Gallery.load(session.gallery_dir)) == len(before)
    session.undo()  # the skip
    with pytest.raises(ValueError, match="nothing to undo"):
        session.undo()


def test_bad_input_is_refused_with_the_reason(session, built, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        session.read_photos([broken])
    session.max_upload_bytes = 100
    with pytest.raises(ValueError, match="upload limit"):
        session.read_photos([built["images"][0]])
    session.max_upload_bytes = 10**7
    with pytest.raises(ValueError, match="not in this gallery"):
        session.propose(session.read_photos([built["images"][0]]), species="lion")
    proposal = session.propose(session.read_photos([built["images"][0]]))
    for name in ["", "../etc/passwd", "a/b", "x" * 65]:
        with pytest.raises(ValueError, match="name"):
            session.decide(proposal.id, "new", name=name)
    with pytest.raises(ValueError, match="already exists"):
        session.decide(proposal.id, "new", name="001")
    with pytest.raises(ValueError, match="not an individual"):
        session.decide(proposal.id, "same", identity="zebra/nobody")
    assert session.audit.records() == []  # refused decisions leave no trace


def test_auto_uses_the_gallerys_per_species_choice(built, embedder, tmp_path):
    shutil.copytree(built["gallery"], tmp_path / "gallery")
    photos = [built["images"][7]]

    def recorded(choice: dict | None) -> ReviewSession:
        gallery = Gallery.load(tmp_path / "gallery")
        gallery.calibration["method_choice"] = choice
        gallery.save(tmp_path / "gallery", local_features=Gallery.load_local_features(tmp_path / "gallery"),
                     overwrite=True)
        return ReviewSession(tmp_path / "gallery", *embedder)

    fitted = Gallery.load(built["gallery"]).calibration["method_choice"]
    assert fitted["zebra"]["method"] == "fusion"  # what the demo gallery's fit chose
    session = recorded(fitted)
    assert session.propose(session.read_photos(photos)).ranking.method == "fusion"
    assert session.propose(session.read_photos(photos), species="zebra").candidates[0].method == "fusion"
    session = recorded({"zebra": {**fitted["zebra"], "method": "local"}})
    assert session.propose(session.read_photos(photos)).ranking.method == "local"
    session = recorded(None)  # no recorded choice: global
    assert session.propose(session.read_photos(photos)).ranking.method == "global"


def test_correspondences_count_equals_the_matchers_inliers(built):
    extractor, matcher = LocalFeatureExtractor(max_keypoints=256), LocalMatcher()
    image = Image.open(built["images"][0]).convert("RGB")
    other_view = Image.open(built["images"][1]).convert("RGB")
    query, reference = extractor.extract(image), extractor.extract(other_view)
    found = verified_correspondences(matcher, query, reference)
    assert (found.num_matches, found.num_inliers) == matcher.match_pair(query, reference)
    same = verified_correspondences(matcher, query, query)
    np.testing.assert_allclose(*same.verified())  # an image matches itself point for point
    assert feature_frame_scale((128, 64), 512, True) == (0.25, 0.25)
    assert feature_frame_scale((128, 64), 512, False) == (1.0, 1.0)


def test_typed_boxes_crop_each_photo_and_bad_boxes_are_refused(session, built):
    from wildreid.identification.review.ui import parse_boxes

    assert parse_boxes("", 2) is None
    boxes = parse_boxes("10, 20, 60, 40; 0 0 128 128", 2)
    assert boxes == [[10.0, 20.0, 60.0, 40.0], [0.0, 0.0, 128.0, 128.0]]
    photos = session.read_photos(built["images"][:2], boxes)
    assert photos[0].crop.size == (60, 40) and photos[0].bbox == boxes[0]
    for text, count, reason in [("1, 2, 3", 1, "four numbers"), ("a, b, c, d", 1, "four numbers"),
                                ("0, 0, -5, 10", 1, "w, h > 0"), ("0, 0, 5, 5", 2, "one box per photo")]:
        with pytest.raises(ValueError, match=reason):
            parse_boxes(text, count)


def test_a_gallery_changed_by_another_writer_is_not_overwritten(session, built, embedder, monkeypatch):
    other = ReviewSession(session.gallery_dir, *embedder, top_k=3, review_dir=session.review_dir)
    first = other.propose(other.read_photos([built["images"][0]]))
    other.decide(first.id, "same", identity="zebra/000")
    saved = Gallery.load(session.gallery_dir).metadata["image_id"].tolist()

    proposal = session.propose(session.read_photos([built["images"][3]]))
    with pytest.raises(ValueError, match="changed by another process"):
        session.decide(proposal.id, "same", identity="zebra/001")
    assert Gallery.load(session.gallery_dir).metadata["image_id"].tolist() == saved

    # A save that fails half-way leaves disk untouched and the session showing what is on disk.
    fresh = ReviewSession(session.gallery_dir, *embedder, top_k=3, review_dir=session.review_dir)
    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Gallery, "save", failing_save)
    proposal = fresh.propose(fresh.read_photos([built["images"][3]]))
    with pytest.raises(OSError, match="disk full"):
        fresh.decide(proposal.id, "same", identity="zebra/001")
    assert fresh.gallery.metadata["image_id"].tolist() == saved == Gallery.load(session.gallery_dir).metadata[
        "image_id"].tolist()
    assert len(fresh.local_cache) == len(saved)


def test_undo_after_a_restart_reverts_the_logged_decisions_in_turn(session, built, embedder):
    before = Gallery.load(session.gallery_dir)
    first = session.decide(session.propose(session.read_photos([built["images"][0]]), species="zebra").id,
                           "new", name="Stripes 8")
    second = session.decide(session.propose(session.read_photos([built["images"][1]])).id, "same",
                            identity="zebra/002")
    restarted = ReviewSession(session.gallery_dir, *embedder, top_k=3, review_dir=session.review_dir)
    undone = restarted.undo()  # the last decision first, from the audit log
    assert undone["undoes"] == second["id"] and undone["removed_image_ids"] == second["added_image_ids"]
    assert undone["query_reopened"] is False
    assert restarted.undo()["undoes"] == first["id"]
    restored = Gallery.load(session.gallery_dir)
    assert restored.metadata["image_id"].tolist() == before.metadata["image_id"].tolist()
    np.testing.assert_array_equal(restored.embeddings, before.embeddings)
    assert [line["decision"] for line in restarted.audit.records()] == ["new", "same", "undo", "undo"]
    with pytest.raises(ValueError, match="nothing to undo: every decision in .*audit.jsonl is undone"):
        ReviewSession(session.gallery_dir, *embedder, top_k=3, review_dir=session.review_dir).undo()


def test_undo_from_the_log_is_refused_when_the_gallery_no_longer_holds_the_decisions_images(session, built, embedder):
    session.decide(session.propose(session.read_photos([built["images"][0]])).id, "same", identity="zebra/002")
    shutil.rmtree(session.gallery_dir)
    shutil.copytree(built["gallery"], session.gallery_dir)  # rebuilt since, without the review's image
    restarted = ReviewSession(session.gallery_dir, *embedder, top_k=3, review_dir=session.review_dir)
    with pytest.raises(ValueError, match=r"cannot undo the same decision .*zebra/002.*no longer in the gallery"):
        restarted.undo()
    assert [line["decision"] for line in restarted.audit.records()] == ["same"]  # nothing logged, nothing changed
    assert len(Gallery.load(session.gallery_dir)) == len(Gallery.load(built["gallery"]))
