"""`wildreid calibrate` chooses the gallery's keypoint extractor as it chooses its embedding: a better one becomes the
gallery's (a new revision whose keypoints identify and `adapt --undo` follow), the gallery's own is kept when it
validates best, a gallery without keypoints is given none.
Generated stripes, 16 keypoints at 128 px: SIFT matches these photos far better than ALIKED (validation mAP about 50
against 36 leave-one-out), so an ALIKED gallery switches to SIFT and a SIFT gallery keeps it. The galleries embed with
lite0's ImageNet weights and a broken BN neck (tests/model_testing.py): every photo embeds alike, so the keypoints
decide."""
from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hub_datasets_testing import write_indexed_and_calibration_photos
from model_testing import lite0_model

from wildreid import threads
from wildreid.identification import store
from wildreid.identification.cli import main
from wildreid.identification.embedding_choice import IMAGENET_LITE0
from wildreid.identification.extractor_choice import candidate_extractors
from wildreid.identification.gallery import Gallery
from wildreid.identification.review import open_session
from wildreid.identification.workflows import build_gallery, identify
from wildreid.matching import LocalFeatureExtractor

FAST = ["--num_workers", "0", "--num_threads", "1"]
KEYPOINTS = dict(max_keypoints=16, local_max_side=128)
PAIRING_LINE = re.compile(r"^  (.+): mean mAP ([\d.]+) \(zebra: (\w+) top-1 [\d.]+ mAP [\d.]+\)$", re.MULTILINE)


@pytest.fixture(autouse=True)
def one_core(monkeypatch):
    """Keypoints extracted in this process, with no pool to start (what they are does not depend on it)."""
    monkeypatch.setattr(threads, "available_cores", lambda: 1)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Twelve individuals of five photos on disk, two of each indexed and three (`calibration.csv`) to calibrate on,
    and galleries of the indexed photos: `aliked`, `sift` (their keypoints) and `plain` (none)."""
    root = tmp_path_factory.mktemp("calibrate_extractor")
    photos = root / "photos"
    write_indexed_and_calibration_photos(photos)
    lite0_model(broken_neck=True).save_pretrained(root / "model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threads, "available_cores", lambda: 1)
        for kind, local_features in (("aliked", "aliked"), ("sift", "sift"), ("plain", False)):
            build_gallery(str(root / "model"), [f"csv[species=zebra]:{photos / 'indexed.csv'}"],
                          root / "galleries" / kind, local_features=local_features, num_workers=0, **KEYPOINTS)
    return root


def fresh(source: Path, kind: str, tmp_path: Path) -> Path:
    """A copy of a gallery beside a copy of its model (it records ../../model), for one test to change."""
    shutil.copytree(source / "model", tmp_path / "model")
    return Path(shutil.copytree(source / "galleries" / kind, tmp_path / "galleries" / kind))


def calibrate(source: Path, gallery_dir: Path, *flags: str, also: tuple[str, ...] = ()) -> int:
    """`wildreid calibrate` on the calibration photos (and the specs `also` names)."""
    return main(["calibrate", "--gallery", str(gallery_dir), "--datasets",
                 f"csv[species=zebra]:{source / 'photos' / 'calibration.csv'}", *also, *flags, *FAST])


def pairing_scores(out: str) -> dict[str, float]:
    return {match[1]: float(match[2]) for match in PAIRING_LINE.finditer(out)}


def sift_config() -> dict:
    return LocalFeatureExtractor("sift", KEYPOINTS["max_keypoints"], KEYPOINTS["local_max_side"]).config


def count_extracted(monkeypatch) -> Counter:
    """Images each extractor reads, counted as `extract_paths` is called (calibration and gallery keypoints)."""
    counts: Counter = Counter()
    extract_paths = LocalFeatureExtractor.extract_paths

    def counting(extractor, sources, *args, **kwargs):
        counts[extractor.name] += len(sources)
        return extract_paths(extractor, sources, *args, **kwargs)

    monkeypatch.setattr(LocalFeatureExtractor, "extract_paths", counting)
    return counts


def test_a_better_extractor_becomes_the_gallerys_and_identify_and_undo_follow(source, tmp_path, capsys):
    gallery_dir = fresh(source, "aliked", tmp_path)
    before = store.read_config(gallery_dir)
    assert calibrate(source, gallery_dir) == 0
    out = capsys.readouterr().out
    assert f"choosing {gallery_dir}'s local features among 2 extractors (aliked-n16, sift)" in out, out
    scores = pairing_scores(out)
    assert scores.keys() == {"aliked-n16", "sift"} and scores["sift"] > scores["aliked-n16"] + 10, out
    assert f"extracting sift keypoints of {gallery_dir}'s 24 images, read from their recorded paths" in out, out
    assert "local features: sift validates better: mean mAP" in out, out
    assert f"{gallery_dir} now matches with sift keypoints (revision" in out, out
    after = store.read_config(gallery_dir)
    assert after["local_features"]["config"] == sift_config() and after["model"] == before["model"]
    assert after["files"]["embeddings"]["sha256"] == before["files"]["embeddings"]["sha256"]  # the same embeddings
    assert after["replaced_revision"] == before["revision"]
    choice = after["calibration"]["extractor_choice"]
    assert choice["switched"] and choice["in_use"] == "sift" and choice["replaced_revision"] == before["revision"]
    assert [c["extractor"] for c in choice["candidates"]] == ["aliked-n16", "sift"]
    assert after["calibration"]["method_choice"]["zebra"]["method"] == choice["candidates"][1]["species"]["zebra"][
        "method"]
    assert "embedding_choice" not in after["calibration"]  # one model: nothing to choose there
    cache = Gallery.load_local_features(gallery_dir, after["local_features"]["config"])
    assert len(cache) == 24 and all(cache[key].descriptors.dtype == np.uint8 for key in cache.keys())
    # identify extracts its queries with the gallery's extractor (ALIKED descriptors would be refused, naming both):
    # a gallery photo finds its individual by SIFT keypoints alone.
    photo = str(source / "photos" / "synthetic-stripes_003_000.jpg")
    (answer,), _ = identify(gallery_dir, images=[photo], method="local", num_workers=0)
    assert answer.method == "local" and answer.candidates[0].identity == "zebra/003"
    assert open_session(gallery_dir, review_dir=tmp_path / "review").extractor.config == sift_config()  # the app too
    kept = gallery_dir / "revisions" / before["revision"]
    assert Gallery.load(kept).local_features_config == before["local_features"]["config"]  # ALIKED, still answering
    identify(kept, images=[photo], method="local", num_workers=0)
    assert main(["adapt", "--gallery", str(gallery_dir), "--undo"]) == 0
    undone = store.read_config(gallery_dir)
    assert undone["local_features"] == before["local_features"] and undone["model"] == before["model"]
    (answer,), _ = identify(gallery_dir, images=[photo], method="local", num_workers=0)
    assert answer.candidates[0].identity == "zebra/003"


def test_the_gallerys_extractor_validating_best_keeps_its_keypoints_as_they_were(source, tmp_path, capsys):
    gallery_dir = fresh(source, "sift", tmp_path)
    before = store.read_config(gallery_dir)
    assert calibrate(source, gallery_dir) == 0
    out = capsys.readouterr().out
    scores = pairing_scores(out)
    assert scores.keys() == {"sift", "aliked-n16"} and scores["sift"] > scores["aliked-n16"], out
    assert ("local features: kept sift (no other extractor validates better; a tie keeps the gallery's)"
            in out), out
    after = store.read_config(gallery_dir)
    assert after["local_features"] == before["local_features"] and after["model"] == before["model"]
    for role in ("embeddings", "local_features", "descriptor_index"):
        assert after["files"][role]["sha256"] == before["files"][role]["sha256"], role
    assert after["files"]["local_features"] == before["files"]["local_features"]  # the very file, not a copy
    assert after["replaced_revision"] is None and not (gallery_dir / "revisions").exists()
    # The record names both candidates with their figures, per species, and why the gallery's stays.
    choice = after["calibration"]["extractor_choice"]
    assert not choice["switched"] and choice["best"] == choice["in_use"] == "sift"
    assert [c["extractor"] for c in choice["candidates"]] == ["sift", "aliked-n16"]
    assert [c["config"]["method"] for c in choice["candidates"]] == ["sift", "aliked"]
    for candidate in choice["candidates"]:
        figures = candidate["species"]["zebra"]
        assert figures["validation_queries"] == 36 and candidate["mean_map"] == figures["map"]
        assert abs(100 * figures["map"] - scores[candidate["extractor"]]) < 0.051
    assert choice["candidates"][1]["config"]["max_keypoints"] == 16 and choice["candidates"][1]["config"][
        "max_side"] == 128  # at the gallery's budget and side
    assert "no other extractor validates better" in choice["reason"]


def test_models_and_extractors_are_weighed_together_each_embedding_and_keypoints_made_once(source, tmp_path, capsys,
                                                                                          monkeypatch):
    gallery_dir = fresh(source, "aliked", tmp_path)
    before = store.read_config(gallery_dir)
    extracted = count_extracted(monkeypatch)
    assert calibrate(source, gallery_dir, "--models", IMAGENET_LITE0) == 0
    out = capsys.readouterr().out
    assert "and its local features among 2 extractors (aliked-n16, sift)" in out and "each of the 4 pairings" in out
    scores = pairing_scores(out)
    model = "../../model"
    assert scores.keys() == {f"{m} with {e}" for m in (model, IMAGENET_LITE0) for e in ("aliked-n16", "sift")}, out
    best = max(scores, key=scores.get)
    assert best.endswith("with sift"), out
    # Keypoints do not depend on the model: each extractor read the 36 calibration images once; the winner also read
    # the 24 gallery photos.
    assert extracted == {"aliked-n16": 36, "sift": 36 + 24}, extracted
    after = store.read_config(gallery_dir)
    assert after["local_features"]["config"] == sift_config() and after["replaced_revision"] == before["revision"]
    embedding, extractor = (after["calibration"][key] for key in ("embedding_choice", "extractor_choice"))
    assert embedding["with_local_features"] == "sift" and extractor["with_model"] == best.split(" with ")[0]
    assert extractor["switched"] and after["calibration"]["method_choice"]["zebra"]["method"] in ("local", "fusion")
    assert after["model"]["model_name_or_path"] == embedding["in_use"]
    assert embedding["switched"] == (embedding["in_use"] != before["model"]["model_name_or_path"])
    assert main(["adapt", "--gallery", str(gallery_dir), "--undo"]) == 0  # one revision back: model and keypoints
    undone = store.read_config(gallery_dir)
    assert undone["local_features"] == before["local_features"] and undone["model"] == before["model"]


def test_a_gallery_among_the_calibration_images_takes_their_keypoints(source, tmp_path, capsys, monkeypatch):
    gallery_dir = fresh(source, "aliked", tmp_path)
    extracted = count_extracted(monkeypatch)
    indexed = f"csv[species=zebra]:{source / 'photos' / 'indexed.csv'}"
    assert calibrate(source, gallery_dir, also=(indexed,)) == 0  # the indexed photos and the others
    out = capsys.readouterr().out
    assert f"{gallery_dir}'s 24 images are among the calibration images: their sift keypoints are used" in out, out
    assert extracted == {"aliked-n16": 60, "sift": 60}, extracted  # none read twice
    choice = store.read_config(gallery_dir)["calibration"]["extractor_choice"]
    assert choice["switched"] and choice["gallery_keypoints"] == "calibration images"
    cache = Gallery.load_local_features(gallery_dir, sift_config())
    assert len(cache) == 24 and all(cache[key].descriptors.dtype == np.uint8 for key in cache.keys())


def test_a_gallery_without_local_features_is_given_none(source, tmp_path, capsys):
    gallery_dir = fresh(source, "plain", tmp_path)
    assert calibrate(source, gallery_dir) == 0
    out = capsys.readouterr().out
    assert "local features" not in out and "choosing" not in out, out
    after = store.read_config(gallery_dir)
    assert after["local_features"] is None and "local_features" not in after["files"]
    assert "extractor_choice" not in after["calibration"]
    assert calibrate(source, gallery_dir, "--local-features", "aliked") == 2
    assert "has no local features and calibrate does not add them" in capsys.readouterr().err
    assert store.read_config(gallery_dir)["revision"] == after["revision"]


def test_candidate_extractors_are_the_gallerys_and_the_other_at_its_budget_unless_told():
    sift = sift_config()
    aliked = LocalFeatureExtractor("aliked", 16, 128).config
    t16 = LocalFeatureExtractor("aliked", 16, 128, variant="t16").config
    assert [c.config for c in candidate_extractors(sift, None, None, "g")] == [sift, aliked]
    assert [c.config for c in candidate_extractors(t16, None, "auto", "g")] == [t16, sift]  # the gallery's variant
    assert [c.config for c in candidate_extractors(sift, ["aliked", "sift"], "fusion", "g")] == [sift, aliked]
    assert candidate_extractors(sift, [], None, "g") == []  # the flag alone: the gallery's only
    assert candidate_extractors(sift, ["sift"], None, "g") == []
    assert candidate_extractors(sift, None, "global", "g") == []  # global scores without keypoints
    assert candidate_extractors(None, None, None, "g") == []
    with pytest.raises(ValueError, match="--method global scores without keypoints"):
        candidate_extractors(sift, ["aliked"], "global", "g")
    with pytest.raises(ValueError, match="g has no local features"):
        candidate_extractors(None, ["sift"], None, "g")
