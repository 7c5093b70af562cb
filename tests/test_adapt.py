"""`wildreid adapt`: held-out individuals chosen and measured, a better model installed as a new revision (the old one
kept loadable, `--undo` back), a worse one not installed, Ctrl-C and kill -9 leaving the gallery as it was and a
rerun resuming.
Tiny generated photos and a 64 px lite0, a few training steps."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from model_testing import lite0_model

from hub_datasets.synthetic import generate_rows
from wildreid.identification import store
from wildreid.identification.adapt_data import choose_holdout, describe
from wildreid.identification.adapt_plan import MIN_STEPS, steps_for_budget
from wildreid.identification.cli import main
from wildreid.identification.gallery import Gallery
from wildreid.identification.review import open_session
from wildreid.identification.workflows import build_gallery, calibrate_gallery, identify

REPO = Path(__file__).resolve().parents[1]
FAST = ["--max_steps", "8", "--num_workers", "0", "--num_threads", "1"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Sixty photos of twelve individuals, two per sighting (`encounter`), and two galleries of them: `imagenet`,
    indexed with lite0's ImageNet weights, and `off_neck` (SIFT keypoints too), with the same weights but BN-neck
    statistics far from these photos' (as a model made for other animals can have, here in the extreme): every
    embedding points one way, so retrieval among the held-out individuals is at chance until adapt recalibrates the
    neck and trains, a large margin that does not hang on how 10 steps generalise from ten individuals."""
    root = tmp_path_factory.mktemp("adapt")
    photos = root / "photos"
    photos.mkdir()
    lines = ["image,identity,encounter"]
    for row in generate_rows(n_species=1, n_identities=12, images_per_identity=5, image_size=96, seed=3):
        name = row["image_id"].replace("/", "_")
        (photos / name).write_bytes(row["image"]["bytes"])
        individual, index = row["identity"].split("/")[-1], int(Path(name).stem.rsplit("_", 1)[1])
        lines.append(f"{name},{individual},{individual}-{index // 2}")
    (photos / "labels.csv").write_text("\n".join(lines) + "\n")
    for kind in ("imagenet", "off_neck"):
        lite0_model(broken_neck=kind == "off_neck").save_pretrained(root / kind / "model")
        build_gallery(str(root / kind / "model"), [f"csv[species=zebra]:{photos / 'labels.csv'}"],
                      root / kind / "gallery", local_features=kind == "off_neck", num_workers=0)
    return root


def fresh(source: Path, kind: str, tmp_path: Path) -> Path:
    """A copy of a gallery and its model (recorded as ../model), for one test to change."""
    shutil.copytree(source / kind, tmp_path / kind)
    return tmp_path / kind / "gallery"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_holdout_is_seeded_disjoint_and_leaves_single_photos_and_tiny_species_clear():
    rows = [{"identity": f"zebra/{i:02d}", "species": "zebra", "encounter": f"{i}-{k // 2}"}
            for i in range(20) for k in range(4 if i else 1)]  # zebra/00 has one photo
    first = choose_holdout(rows, 0.2, seed=0, gallery_dir=Path("g"))
    assert first == choose_holdout(list(reversed(rows)), 0.2, seed=0, gallery_dir=Path("g"))  # row order: no matter
    held = first["zebra"]["individuals"]
    assert len(held) == 4 and "zebra/00" not in held and first["zebra"]["across_sightings"]
    assert choose_holdout(rows, 0.2, seed=1, gallery_dir=Path("g"))["zebra"]["individuals"] != held
    one_sighting = [{**row, "encounter": row["identity"]} for row in rows]  # every individual seen once: plain
    assert not choose_holdout(one_sighting, 0.2, 0, Path("g"))["zebra"]["across_sightings"]
    with pytest.raises(ValueError, match=r"too few individuals of zebra to adapt to: 3 individuals, 2 of them"):
        choose_holdout(rows[:1 + 4 + 4], 0.2, 0, Path("g"))


def test_the_step_budget_fits_the_time_or_is_refused_naming_what_it_needs():
    steps, why = steps_for_budget(600, 1.0, 0.05, train_images=800, holdout_images=200, batch_images=16,
                                  after_training=100)
    assert steps == int((600 - 100 - 0.05 * (800 + 200 * 5)) / 1.25) and "time budget" in why
    assert steps_for_budget(6000, 1.0, 0.05, train_images=80, holdout_images=20, batch_images=16,
                            after_training=100) == (100, "20 passes over the 80 training images")
    with pytest.raises(ValueError, match=rf"at least {MIN_STEPS} need about \d+ minutes"):
        steps_for_budget(60, 1.0, 0.05, train_images=800, holdout_images=200, batch_images=16, after_training=30)


def test_a_better_model_becomes_a_new_revision_identify_uses_and_undo_leaves(source, tmp_path, capsys):
    gallery_dir = fresh(source, "off_neck", tmp_path)
    before = store.read_config(gallery_dir)
    photo = str(next((source / "photos").glob("*.jpg")))
    assert main(["adapt", "--gallery", str(gallery_dir), *FAST]) == 0
    out = capsys.readouterr().out
    start, adapted = (float(x) for x in re.findall(r"held-out individuals, \w+: +top-1 [\d.]+ mAP ([\d.]+)", out))
    assert adapted > start + 10 and "installed:" in out, out
    after = store.read_config(gallery_dir)
    assert after["revision"] != before["revision"] and after["counts"] == before["counts"]
    assert after["model"]["model_name_or_path"].startswith("./models/adapted-")
    assert after["files"]["local_features"] == before["files"]["local_features"]  # keypoints kept, not redone
    assert after["calibration"]["method_choice"]["zebra"]["requested"] == "auto"  # recalibrated as calibrate does
    record = json.loads((gallery_dir / after["model"]["model_name_or_path"] / "adaptation.json").read_text())
    assert record["replaced_revision"] == before["revision"] and record["seed"] == 0
    assert len(record["holdout"]["zebra"]["individuals"]) == 2 and record["after"]["mean"]["map"] * 100 > adapted - 0.1
    # Held out across sightings, so training chose its best step across sightings too: the figure it kept is the
    # figure adapt then measured on the same photos.
    assert record["holdout"]["zebra"]["across_sightings"] and record["recipe"]["val_across_sightings"]
    assert record["training"]["best_mean_map"] == pytest.approx(record["after"]["mean"]["map"], abs=1e-5)
    # The gallery's own model, no --model: a gallery photo finds itself at cosine 1, so the new revision's
    # embeddings are the adapted model's, which its tag names.
    (answer,), _ = identify(gallery_dir, images=[photo], method="global", num_workers=0)
    assert answer.candidates[0].score == pytest.approx(1.0, abs=1e-4)
    identify(gallery_dir, images=[photo], num_workers=0)  # and by the method calibration chose
    session = open_session(gallery_dir, review_dir=tmp_path / "review")  # the review app: the same model, no --model
    assert session.model_tag.same_embedding_space(Gallery.load(gallery_dir).model_tag)
    kept = gallery_dir / "revisions" / before["revision"]
    assert Gallery.load(kept).model_tag.revision == before["model"]["revision"]  # the old revision still answers
    identify(kept, images=[photo], num_workers=0)
    calibrate_gallery(gallery_dir, [f"csv[species=zebra]:{source / 'photos' / 'labels.csv'}"], method="global",
                      num_workers=0)  # a later save keeps the model its revision uses
    identify(gallery_dir, images=[photo], num_workers=0)
    assert main(["adapt", "--gallery", str(gallery_dir), "--undo"]) == 0
    assert store.read_config(gallery_dir)["model"]["revision"] == before["model"]["revision"]
    identify(gallery_dir, images=[photo], num_workers=0)
    assert main(["adapt", "--gallery", str(gallery_dir), "--undo"]) == 2  # nothing adapted to undo now
    assert "was not installed by `wildreid adapt`" in capsys.readouterr().err


def test_a_worse_model_is_not_installed_and_the_gallery_stays_as_it_was(source, tmp_path, capsys):
    gallery_dir = fresh(source, "imagenet", tmp_path)
    files = folder_bytes(gallery_dir)
    # A learning rate 500x the recipe's collapses the embedding: every held-out image looks alike.
    assert main(["adapt", "--gallery", str(gallery_dir), *FAST, "--learning_rate", "0.5", "--backbone_learning_rate",
                 "0.5", "--freeze_backbone_steps", "0", "--weight_interpolation", "--augmentation", "erase_p=0",
                 "horizontal_flip_p=0.5"]) == 0
    out = capsys.readouterr().out
    verdict = re.search(r"not installed: .*\(mAP ([\d.]+) vs ([\d.]+) at the start, top-1 [\d.]+ vs [\d.]+\); "
                        r".* is unchanged \(revision (\S+)\)", out)
    assert verdict, out
    assert float(verdict[1]) < float(verdict[2]) and verdict[3] == store.read_config(gallery_dir)["revision"]
    assert folder_bytes(gallery_dir) == files and not (gallery_dir / "models").exists()
    result = json.loads((tmp_path / "imagenet" / "gallery.adapt" / "result.json").read_text())
    assert not result["installed"] and describe(result["after"]) in out
    assert result["recipe"]["augmentation"] == {"erase_p": 0.0, "horizontal_flip_p": 0.5}  # the flags, recorded


def test_ctrl_c_and_kill_9_during_training_leave_the_gallery_identical_and_the_same_command_resumes(
        source, tmp_path, capsys):
    gallery_dir = fresh(source, "imagenet", tmp_path)
    files = folder_bytes(gallery_dir)
    command = ["adapt", "--gallery", str(gallery_dir), "--max_steps", "20", "--num_workers", "0", "--num_threads", "1",
               "--weight_interpolation"]
    checkpoints = tmp_path / "imagenet" / "gallery.adapt" / "run" / "checkpoints"

    def stop_after_a_checkpoint(sig: int, past_step: int) -> tuple[int, str]:
        """Run the command until a checkpoint beyond `past_step` is complete, send `sig`; its step and output."""
        process = subprocess.Popen([sys.executable, "-m", "wildreid.identification.cli", *command], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 300
        while not (steps := [int(p.parent.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*/*progress.json")
                             if int(p.parent.name.split("-")[1]) > past_step]):
            assert process.poll() is None and time.time() < deadline, "adapt ended before a new checkpoint"
            time.sleep(0.2)
        process.send_signal(sig)
        out, _ = process.communicate(timeout=120)
        assert folder_bytes(gallery_dir) == files
        Gallery.load(gallery_dir)
        return max(steps), out

    # Ctrl-C: the trainer checkpoints the step it is at and adapt says how to go on.
    interrupted_at, out = stop_after_a_checkpoint(signal.SIGINT, 0)
    assert "adapt stopped: the gallery is unchanged; run the same command again to resume" in out
    stop_after_a_checkpoint(signal.SIGKILL, interrupted_at)  # resumed there, then killed outright
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "resuming the adaptation planned in" in out
    assert re.search(rf"resumed from \S+checkpoint-\d+ at step (?!{interrupted_at}\b)[1-9]", out)  # the kill's
    result = json.loads((tmp_path / "imagenet" / "gallery.adapt" / "result.json").read_text())
    assert result["training"]["total_steps"] == 20


def test_galleries_adapt_cannot_train_on_are_refused_before_any_training(source, tmp_path, capsys):
    tiny = tmp_path / "tiny"
    build_gallery(str(source / "imagenet" / "model"),
                  [f"csv[species=zebra,max_identities=3]:{source / 'photos' / 'labels.csv'}"], tiny, num_workers=0)
    assert main(["adapt", "--gallery", str(tiny), *FAST]) == 2
    assert "too few individuals of zebra to adapt to: 3 individuals" in capsys.readouterr().err
    generated = tmp_path / "generated"
    build_gallery(str(source / "imagenet" / "model"),
                  ["synthetic[n_species=1,n_identities=4,images_per_identity=2,image_size=64]"], generated,
                  num_workers=0)
    assert main(["adapt", "--gallery", str(generated), *FAST]) == 2
    assert "no file path recorded" in capsys.readouterr().err
    assert main(["adapt", "--gallery", str(tmp_path / "missing"), *FAST]) == 2
    assert main(["adapt", "--gallery", str(tiny), *FAST, "--learning_rate", "-1"]) == 2
    assert "--learning_rate must be > 0" in capsys.readouterr().err
    assert main(["adapt", "--gallery", str(tiny), *FAST, "--augmentation", "flip=0.5"]) == 2
    assert "--augmentation 'flip=0.5': expected KEY=VALUE with KEY one of shift" in capsys.readouterr().err
    assert main(["adapt", "--gallery", str(tiny), *FAST, "--augmentation", "scale=big"]) == 2
    assert "'big' is not a number" in capsys.readouterr().err
