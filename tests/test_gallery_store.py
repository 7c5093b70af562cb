"""Gallery writes under faults (issue 16): an interrupted save leaves the old or the new gallery, never a
mix; a second writer is refused at once; entries are added and saved as one step; a gallery records its
model so that `identify` works from any directory."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from wildreid.identification import Gallery, GalleryBusyError, ModelMismatchError, ModelTag
from wildreid.identification import store
from wildreid.identification.search import l2_normalize

DIM = 16
TAG_A = ModelTag("wildreid/model-a", "sha256:aaaa", DIM, 64, "p")
TAG_B = ModelTag("wildreid/model-b", "sha256:bbbb", DIM, 64, "p")


def gallery_of(tag: ModelTag, seed: int, count: int = 6) -> Gallery:
    embeddings = l2_normalize(np.random.default_rng(seed).standard_normal((count, DIM)))
    gallery = Gallery()
    gallery.add(embeddings, {"image_id": [f"img{i}" for i in range(count)],
                             "identity": [f"zebra/{i // 2}" for i in range(count)]}, tag)
    return gallery


class Killed(BaseException):
    """Stands for kill -9: nothing after the failing write runs (no cleanup code catches it)."""


def kill_at(monkeypatch, target, name):
    def killed(*args, **kwargs):
        raise Killed(name)

    monkeypatch.setattr(target, name, killed)


def assert_is(loaded: Gallery, expected: Gallery):
    assert loaded.model_tag == expected.model_tag
    np.testing.assert_array_equal(loaded.embeddings, expected.embeddings)
    assert list(loaded.metadata["image_id"]) == list(expected.metadata["image_id"])


@pytest.mark.parametrize("moment", ["after the embeddings, before the metadata", "before the switch",
                                    "after the switch, before cleaning up"])
def test_a_save_killed_between_files_leaves_the_old_or_the_new_gallery(tmp_path, monkeypatch, moment):
    folder = tmp_path / "gallery"
    old, new = gallery_of(TAG_A, seed=0), gallery_of(TAG_B, seed=1, count=8)
    old.save(folder)
    if moment == "after the embeddings, before the metadata":
        kill_at(monkeypatch, pd.DataFrame, "to_parquet")
    elif moment == "before the switch":
        kill_at(monkeypatch, store.os, "replace")
    else:
        kill_at(monkeypatch, store, "_remove_unreferenced")
    with pytest.raises(Killed):
        new.save(folder, overwrite=True)
    monkeypatch.undo()
    assert_is(Gallery.load(folder), new if moment.startswith("after the switch") else old)
    new.save(folder, overwrite=True)  # the next save cleans up what the killed one left
    assert_is(Gallery.load(folder), new)
    revision = json.loads((folder / "gallery.json").read_text())["revision"]
    assert sorted(p.name for p in folder.iterdir()) == [
        ".gallery.lock", f"embeddings.{revision}.safetensors", "gallery.json", f"metadata.{revision}.parquet"]


def test_a_file_swapped_in_from_another_revision_is_refused(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    gallery_of(TAG_A, seed=0).save(first)
    gallery_of(TAG_A, seed=2).save(second)
    name = lambda folder: json.loads((folder / "gallery.json").read_text())["files"]["embeddings"]["name"]
    (first / name(first)).write_bytes((second / name(second)).read_bytes())
    with pytest.raises(ValueError, match="checksum differs"):
        Gallery.load(first)


def test_a_folder_written_before_revisions_still_loads(tmp_path):
    from safetensors.numpy import save_file

    gallery = gallery_of(TAG_A, seed=0)
    folder = tmp_path / "legacy"
    folder.mkdir()
    save_file({"embeddings": gallery.embeddings}, str(folder / "embeddings.safetensors"))
    gallery.metadata.to_parquet(folder / "metadata.parquet", index=False)
    (folder / "gallery.json").write_text(json.dumps(store.RECORD.tag(model=TAG_A.to_dict())))
    from wildreid.matching import LocalFeatureCache

    LocalFeatureCache.from_features([], [], {"method": "sift"}).save(folder / "local_features.npz")
    (folder / "gallery.json").write_text(json.dumps(store.RECORD.tag(
        model=TAG_A.to_dict(), local_features={"file": "local_features.npz", "config": {"method": "sift"}})))
    loaded = Gallery.load(folder)
    assert_is(loaded, gallery)
    loaded.save(folder, overwrite=True)  # rewritten as a revision: the fixed-name arrays go, the cache stays
    assert not (folder / "embeddings.safetensors").exists()
    assert_is(Gallery.load(folder), gallery)
    assert len(Gallery.load_local_features(folder)) == 0


def hold_lock_in_another_process(folder):
    script = textwrap.dedent(f"""
        import sys, time
        from filelock import FileLock
        lock = FileLock({str(folder / store.LOCK_FILE)!r}, timeout=0)
        lock.acquire()
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_at_once(tmp_path):
    folder = tmp_path / "gallery"
    gallery_of(TAG_A, seed=0).save(folder)
    holder = hold_lock_in_another_process(folder)
    try:
        start = time.monotonic()
        with pytest.raises(GalleryBusyError, match="being written by another process"):
            gallery_of(TAG_B, seed=1).save(folder, overwrite=True)
        with pytest.raises(GalleryBusyError):
            Gallery.add_and_save(folder, gallery_of(TAG_A, seed=3).embeddings[:1], {"image_id": ["x"], "identity": ["zebra/x"]}, TAG_A)
        from wildreid.identification.cli import main

        assert main(["index", "--model", str(tmp_path / "no_model"), "--datasets", "synthetic", "--output",
                     str(folder), "--overwrite"]) == 2
        assert time.monotonic() - start < 30
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert_is(Gallery.load(folder), gallery_of(TAG_A, seed=0))


def test_add_and_save_appends_under_the_lock(tmp_path):
    folder = tmp_path / "gallery"
    gallery_of(TAG_A, seed=0).save(folder)
    extra = l2_normalize(np.random.default_rng(5).standard_normal((2, DIM)))
    saved = Gallery.add_and_save(folder, extra, [{"image_id": "new1", "identity": "zebra/new", "reviewer": "ana"},
                                                 {"image_id": "new2", "identity": "zebra/new"}], TAG_A)
    loaded = Gallery.load(folder)
    assert len(loaded) == len(saved) == 8 and "zebra/new" in loaded.identities
    assert json.loads(loaded.metadata.at[6, "extra"]) == {"reviewer": "ana"}
    with pytest.raises(ModelMismatchError):
        Gallery.add_and_save(folder, extra, [{"image_id": "b1", "identity": "z/b"}, {"image_id": "b2", "identity": "z/b"}], TAG_B)
    with pytest.raises(FileNotFoundError, match="not a gallery folder"):
        Gallery.add_and_save(tmp_path / "nothing", extra, [{"image_id": "c", "identity": "z/c"}] * 2, TAG_A)
    assert len(Gallery.load(folder)) == 8


def test_model_reference_is_relative_to_the_gallery(tmp_path, monkeypatch):
    (tmp_path / "runs" / "base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    reference = store.model_reference("runs/base", tmp_path / "galleries" / "lion")
    assert reference == "../../runs/base"
    monkeypatch.chdir(tmp_path / "runs")  # anywhere else
    resolved = store.resolve_model_reference(reference, tmp_path / "galleries" / "lion")
    assert resolved == str((tmp_path / "runs" / "base").resolve())
    assert store.model_reference("org/hub-model", tmp_path / "g") == "org/hub-model"
    assert store.resolve_model_reference("org/hub-model", tmp_path / "g") == "org/hub-model"


def test_saving_a_stale_copy_over_a_newer_revision_is_refused(tmp_path):
    folder = tmp_path / "gallery"
    gallery_of(TAG_A, seed=0).save(folder)
    first, second = Gallery.load(folder), Gallery.load(folder)
    first.add(l2_normalize(np.ones((1, DIM))), [{"image_id": "a", "identity": "zebra/a"}], TAG_A)
    first.save(folder, overwrite=True)
    first.save(folder, overwrite=True)  # its own revision: fine
    second.add(l2_normalize(np.ones((1, DIM))), [{"image_id": "b", "identity": "zebra/b"}], TAG_A)
    with pytest.raises(GalleryBusyError, match="was saved by another process since it was loaded"):
        second.save(folder, overwrite=True)
    assert "a" in set(Gallery.load(folder).metadata["image_id"])
    gallery_of(TAG_B, seed=1).save(folder, overwrite=True)  # a new gallery replaces whatever is there
