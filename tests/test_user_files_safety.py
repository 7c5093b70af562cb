"""Issue 34: nothing a user owns is deleted or overwritten, one bad photo never sinks a batch, names from a
user's files never act as formulas or terminal escapes."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hub_datasets.synthetic import generate_rows
from modeling_wildreid import ImageLoadError, WildReIDConfig, WildReIDModel, load_image
from wildreid.identification import Gallery
from wildreid.identification.cli import main
from wildreid.identification.results import CandidateIndividual, IdentificationResult, write_results
from wildreid.identification.store import CONFIG_FILE
from wildreid.safe_text import printable
from wildreid.training import TrainingConfig, train

REPO = Path(__file__).resolve().parents[1]
DATA = "synthetic[n_species=1,n_identities=4,images_per_identity=3,image_size=96,seed=5]"
FOREIGN = {"metadata.survey2023.parquet": b"not ours", "embeddings.megadescriptor.safetensors": b"theirs",
           "local_features.v1.npz": b"keep me", "notes.txt": b"field notes"}


def save_model(path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    WildReIDModel(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64)).save_pretrained(path)
    return path


def foreign_folder(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    for name, content in FOREIGN.items():
        (path / name).write_bytes(content)
    return {name: (path / name).read_bytes() for name in FOREIGN}


def contents(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    save_model(root / "model")
    assert main(["index", "--model", str(root / "model"), "--datasets", f"{DATA}:train", "--output",
                 str(root / "gallery"), "--local-features", "--num_workers", "0"]) == 0
    return root


# ---- output folders ------------------------------------------------------------------------------------


def test_index_refuses_a_non_empty_folder_that_is_not_a_gallery_and_changes_nothing(work, tmp_path, capsys):
    target = tmp_path / "survey"
    before = foreign_folder(target)
    assert main(["index", "--model", str(work / "model"), "--datasets", f"{DATA}:train", "--output", str(target),
                 "--num_workers", "0"]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "--overwrite" in err and "not empty" in err
    assert contents(target) == before  # not even a lock file left behind


def test_index_overwrite_into_a_foreign_folder_leaves_every_other_file_byte_identical(work, tmp_path):
    target = tmp_path / "survey"
    before = foreign_folder(target)
    for _ in range(2):  # the second save cleans up the first revision, and only it
        assert main(["index", "--model", str(work / "model"), "--datasets", f"{DATA}:train", "--output", str(target),
                     "--num_workers", "0", "--overwrite"]) == 0
    after = contents(target)
    assert {name: after[name] for name in FOREIGN} == before
    assert len(Gallery.load(target)) == 9
    revision_files = [name for name in after if name not in FOREIGN and not name.startswith((CONFIG_FILE, "."))]
    assert len(revision_files) == 2  # embeddings + metadata of the current revision only


def test_gallery_files_are_confined_to_the_gallery_folder(work, tmp_path):
    gallery = tmp_path / "gallery"
    assert main(["index", "--model", str(work / "model"), "--datasets", f"{DATA}:train", "--output", str(gallery),
                 "--num_workers", "0"]) == 0
    manifest = json.loads((gallery / CONFIG_FILE).read_text())
    name = manifest["files"]["embeddings"]["name"]
    outside = tmp_path / "elsewhere.safetensors"
    (gallery / name).rename(outside)
    (gallery / name).symlink_to(outside)  # same bytes, same checksum, outside the folder
    with pytest.raises(ValueError, match="symlink .* outside the gallery folder"):
        Gallery.load(gallery)
    manifest["files"]["embeddings"]["name"] = str(outside)  # an absolute path in the manifest
    (gallery / CONFIG_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a plain name inside the gallery folder"):
        Gallery.load(gallery)


TINY_TRAINING = {"datasets": [f"{DATA}:train"], "backbone": "tf_efficientnet_lite0", "backbone_pretrained": False,
                 "image_size": 64, "identities_per_batch": 2, "images_per_identity": 2, "num_workers": 0,
                 "warmup_steps": 1, "neck_calibration_images": 8, "log_with": "none", "max_steps": 3}


def test_training_refuses_a_foreign_folder_and_an_earlier_run_without_being_told(tmp_path):
    target = tmp_path / "run"
    before = foreign_folder(target)
    (target / "checkpoints" / "checkpoint-7").mkdir(parents=True)
    before = contents(target)
    with pytest.raises(FileExistsError, match=r"not empty .*--overwrite_output_dir"):
        train(TrainingConfig.from_dict({**TINY_TRAINING, "output_dir": str(target)}))  # train.py's path
    assert contents(target) == before  # (bench/bad_inputs.py runs train.py itself on such a folder)
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "wildreid_run.json").write_text(json.dumps({"run_id": "abc"}))
    with pytest.raises(FileExistsError, match="earlier training run.*--resume_from_checkpoint latest"):
        TrainingConfig.from_dict({**TINY_TRAINING, "output_dir": str(tmp_path / "earlier")}).validate()


def test_a_run_prunes_only_its_own_checkpoints(tmp_path):
    target = tmp_path / "run"
    train(TrainingConfig.from_dict({**TINY_TRAINING, "output_dir": str(target), "save_steps": 1,
                                    "save_total_limit": 1}))
    earlier = sorted(p.name for p in (target / "checkpoints").iterdir())
    assert earlier == ["checkpoint-3"]
    (target / "checkpoints" / "checkpoint-7").mkdir()  # another tool's folder of the same pattern
    (target / "checkpoints" / "checkpoint-7" / "weights.bin").write_bytes(b"someone's")
    train(TrainingConfig.from_dict({**TINY_TRAINING, "output_dir": str(target), "save_steps": 1,
                                    "save_total_limit": 1, "max_steps": 2, "overwrite_output_dir": True}))
    names = sorted(p.name for p in (target / "checkpoints").iterdir())
    # The new run keeps its last checkpoint (2); the earlier run's 3 and the foreign 7 are untouched,
    # although by number they are the "newest" that pruning used to keep instead of the run's own.
    assert names == ["checkpoint-2", "checkpoint-3", "checkpoint-7"]
    assert (target / "checkpoints" / "checkpoint-7" / "weights.bin").read_bytes() == b"someone's"


# ---- one bad photo never sinks a batch ----------------------------------------------------------------


def query_photo(path: Path) -> Path:
    rows = generate_rows(n_species=1, n_identities=4, images_per_identity=3, image_size=96, seed=5)
    path.write_bytes(rows[0]["image"]["bytes"])
    return path


@pytest.mark.parametrize("size", [(40000, 20), (20, 40000)])
def test_an_extreme_aspect_ratio_is_skipped_with_a_reason_while_the_batch_is_answered(work, tmp_path, size):
    good = query_photo(tmp_path / "good.jpg")
    strip = tmp_path / "strip.png"
    Image.new("RGB", size, (120, 80, 40)).save(strip)
    output = tmp_path / "matches.json"
    assert main(["identify", "--gallery", str(work / "gallery"), "--images", str(strip), str(good),
                 "--method", "local", "--output", str(output)]) == 0
    written = json.loads(output.read_text())
    assert [r["query"] for r in written["results"]] == [str(good)]
    assert written["failures"][0]["file"] == str(strip) and "aspect ratio" in written["failures"][0]["reason"]


def test_a_fifo_is_refused_without_blocking(work, tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(fifo)
    good = query_photo(tmp_path / "good.jpg")
    output = tmp_path / "matches.json"
    assert main(["identify", "--gallery", str(work / "gallery"), "--images", str(fifo), str(good),
                 "--output", str(output)]) == 0
    assert time.monotonic() - started < 60
    assert json.loads(output.read_text())["failures"][0]["file"] == str(fifo)


def test_missing_query_rows_are_listed_and_the_rest_answered(work, tmp_path):
    good = query_photo(tmp_path / "good.jpg")
    rows = [["image", "identity"], ["good.jpg", "a"]] + [[f"gone{i}.jpg", "b"] for i in range(12)]
    with open(tmp_path / "queries.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    output = tmp_path / "matches.json"
    assert main(["identify", "--gallery", str(work / "gallery"), "--datasets", f"csv:{tmp_path / 'queries.csv'}",
                 "--output", str(output)]) == 0
    written = json.loads(output.read_text())
    assert [r["query"] for r in written["results"]] == ["good.jpg"] and good.is_file()
    assert len(written["failures"]) == 12 and "gone0.jpg" in written["failures"][0]["reason"]
    # Loading for training or a gallery stays strict, and one message names the rows, not only the first.
    from hub_datasets.user_data import build_csv

    with pytest.raises(ValueError, match=r"12 row\(s\) name an image that cannot be used(.|\n)*line 3(.|\n)*and 2 more"):
        build_csv(tmp_path / "queries.csv")


def test_a_threshold_that_is_not_a_number_is_refused(work, tmp_path, capsys):
    good = query_photo(tmp_path / "good.jpg")
    with pytest.raises(SystemExit):
        main(["identify", "--gallery", str(work / "gallery"), "--images", str(good), "--threshold", "nan"])
    assert "finite number" in capsys.readouterr().err


# ---- names that would act -----------------------------------------------------------------------------


def test_formula_and_escape_names_are_written_as_text(tmp_path):
    hostile = ['=HYPERLINK("http://example.invalid","id")', "@SUM(A1)", "+lion", "-2+3", "=2+5"]
    results = [IdentificationResult(query=name, top_score=-0.25, is_new=False, threshold=0.5, candidates=[
        CandidateIndividual(identity=name, score=-0.25, probability=None, image_id=name, path=None, species=name)])
        for name in hostile]
    path = write_results(results, [], tmp_path / "matches.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row, name in zip(rows, hostile):
        for column in ("query", "identity", "image_id", "species"):
            assert row[column] == "'" + name  # OWASP: a leading apostrophe, shown as text
        assert row["score"] == "-0.25"  # numbers stay numbers
    assert printable("lion\x1b]0;pwned\x07/Ayo") == "lion\\x1b]0;pwned\\x07/Ayo"


# ---- worker pools ----------------------------------------------------------------------------------------

WORKERS_SCRIPT = """
import os, sys, time
from wildreid.matching.parallel import parallel_map

def slow(x):
    print("worker", os.getpid(), flush=True)
    time.sleep(600)

if __name__ == "__main__":
    parallel_map(slow, list(range(4)), num_workers=2, progress=False, description="x")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_killing_the_parent_leaves_no_worker_alive(tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(WORKERS_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO), "WILDREID_NUM_THREADS": "2"})
    workers = {int(parent.stdout.readline().split()[1]) for _ in range(2)}
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and not _zombie(pid)]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
