"""End-to-end checks of the local Hub stand-in through the real huggingface_hub, transformers and datasets clients."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, HfFileSystem, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from PIL import Image
from transformers import AutoModel, BertConfig, BertModel

TESTS_DIR = Path(__file__).resolve().parent


def test_environment_routes_every_client_to_the_stub(hub):
    assert constants.ENDPOINT == hub.url == os.environ["HF_ENDPOINT"]
    assert datasets.config.HF_ENDPOINT == hub.url
    assert constants.HF_HUB_DISABLE_XET and not constants.HF_HUB_OFFLINE
    assert Path(constants.HF_HUB_CACHE).parent == Path(os.environ["HF_HOME"]) != Path.home() / ".cache/huggingface"
    assert HfApi().whoami()["name"] == hub.user


def test_upload_folder_lfs_download_and_revisions(hub, tmp_path):
    api, repo_id = HfApi(), hub.new_repo_id()
    url = api.create_repo(repo_id)
    assert url == f"{hub.url}/{repo_id}" and api.create_repo(repo_id, exist_ok=True) == url
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "notes.txt").write_text("first version\n")
    weights = np.random.default_rng(0).bytes(10_500_000)  # > 10 MB binary: must take the LFS path
    (folder / "weights.dat").write_bytes(weights)
    first = api.upload_folder(folder_path=folder, repo_id=repo_id)

    weights_sha = hashlib.sha256(weights).hexdigest()
    assert [(r, s, n) for r, s, n in hub.server.lfs_uploads if r == repo_id] == [(repo_id, weights_sha, len(weights))]
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "notes.txt", "weights.dat"]
    tree = {entry.path: entry for entry in api.list_repo_tree(repo_id)}
    assert tree["notes.txt"].lfs is None and tree["weights.dat"].lfs.sha256 == weights_sha
    assert Path(hf_hub_download(repo_id, "weights.dat")).read_bytes() == weights
    snapshot = Path(snapshot_download(repo_id))
    assert (snapshot / "notes.txt").read_text() == "first version\n"
    assert (snapshot / "weights.dat").read_bytes() == weights

    (folder / "notes.txt").write_text("second version\n")
    second = api.upload_folder(folder_path=folder, repo_id=repo_id)
    assert second.oid != first.oid and len(first.oid) == 40
    assert sum(r == repo_id for r, _, _ in hub.server.lfs_uploads) == 1  # unchanged LFS file not re-uploaded
    assert Path(hf_hub_download(repo_id, "notes.txt")).read_text() == "second version\n"
    assert Path(hf_hub_download(repo_id, "notes.txt", revision=first.oid)).read_text() == "first version\n"
    assert api.model_info(repo_id).sha == second.oid
    assert api.model_info(repo_id, revision=first.oid).sha == first.oid
    with HfFileSystem().open(f"{repo_id}/weights.dat", "rb", block_size=4096) as remote:  # ranged GETs
        remote.seek(5_000_000)
        assert remote.read(100) == weights[5_000_000:5_000_100]
    assert not hub.server.unhandled


def test_missing_repo_file_revision_and_bad_auth_raise_hub_errors(hub, tmp_path):
    api, repo_id = HfApi(), hub.new_repo_id()
    api.create_repo(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub.new_repo_id("never-created"), "config.json", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(hub.new_repo_id("never-created"))
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.json", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="not-a-branch", cache_dir=tmp_path)
    with pytest.raises(HfHubHTTPError, match="Invalid credentials"):
        HfApi(token="hf_wrong").create_repo(hub.new_repo_id())
    with pytest.raises(HfHubHTTPError) as unauthenticated:
        HfApi(token=False).create_repo(hub.new_repo_id())
    assert unauthenticated.value.response.status_code == 401
    private_id = hub.new_repo_id("private")
    api.create_repo(private_id, private=True)
    assert api.model_info(private_id).private
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(private_id)


def test_tree_pagination_paths_info_deletions_and_parent_commit(hub, monkeypatch):
    api, repo_id = HfApi(), hub.new_repo_id()
    api.create_repo(repo_id, repo_type="dataset")
    for name in ("a/1.txt", "a/2.txt", "b/c/3.txt", "top.txt"):
        api.upload_file(path_or_fileobj=name.encode(), path_in_repo=name, repo_id=repo_id, repo_type="dataset")
    monkeypatch.setattr(hub.server, "tree_page_size", 2)  # the client must follow the Link header
    recursive = [e.path for e in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)]
    assert sorted(recursive) == [".gitattributes", "a", "a/1.txt", "a/2.txt", "b", "b/c", "b/c/3.txt", "top.txt"]
    assert [e.path for e in api.list_repo_tree(repo_id, "b", repo_type="dataset")] == ["b/c"]
    info = api.get_paths_info(repo_id, ["a", "top.txt", "nope.txt"], repo_type="dataset")
    assert [(type(e).__name__, e.path) for e in info] == [("RepoFolder", "a"), ("RepoFile", "top.txt")]
    assert info[1].size == len(b"top.txt") and info[1].lfs is None

    stale = api.dataset_info(repo_id).sha
    api.delete_folder("a", repo_id=repo_id, repo_type="dataset")
    assert sorted(api.list_repo_files(repo_id, repo_type="dataset")) == [".gitattributes", "b/c/3.txt", "top.txt"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("a/1.txt", repo_id=repo_id, repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as conflict:  # datasets' push_to_hub relies on parent_commit checks
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, repo_type="dataset",
                        parent_commit=stale)
    assert conflict.value.response.status_code == 412
    assert not hub.server.unhandled


def test_transformers_push_to_hub_and_from_pretrained(hub):
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = BertModel(config)
    repo_id = hub.new_repo_id()
    model.push_to_hub(repo_id)
    assert any(r == repo_id for r, _, _ in hub.server.lfs_uploads)  # model.safetensors went through LFS

    loaded = AutoModel.from_pretrained(repo_id)
    assert type(loaded) is BertModel and loaded.config.hidden_size == 16
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)

    with torch.no_grad():  # a second push to the existing repo (as after more training) replaces the weights
        model.pooler.dense.bias.fill_(0.5)
    model.push_to_hub(repo_id)
    assert torch.equal(AutoModel.from_pretrained(repo_id).pooler.dense.bias, torch.full((16,), 0.5))
    assert not hub.server.unhandled


def _png(value: int) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 5, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _rows(labels: list[str], shades: list[int]) -> datasets.DatasetDict:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    table = {"image": [_png(v) for v in shades], "label": labels}
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(table, features=features)})


def _labels_and_shades(repo_id: str, config: str) -> tuple[list[str], list[int]]:
    split = datasets.load_dataset(repo_id, config, split="train")
    return list(split["label"]), [int(np.asarray(image)[0, 0, 0]) for image in split["image"]]


def test_datasets_configs_push_and_load_in_process_and_subprocess(hub):
    repo_id = hub.new_repo_id()
    _rows(["a1", "a2"], [10, 20]).push_to_hub(repo_id, config_name="a")
    _rows(["b1"], [30]).push_to_hub(repo_id, config_name="b")
    assert _labels_and_shades(repo_id, "a") == (["a1", "a2"], [10, 20])
    assert _labels_and_shades(repo_id, "b") == (["b1"], [30])

    _rows(["a3"], [40]).push_to_hub(repo_id, config_name="a")  # re-pushing "a" must leave "b" intact
    assert _labels_and_shades(repo_id, "a") == (["a3"], [40])
    assert _labels_and_shades(repo_id, "b") == (["b1"], [30])

    script = textwrap.dedent(f"""
        import json, datasets
        features = datasets.Features({{"image": datasets.Image(), "label": datasets.Value("string")}})
        rows = {{"image": [{{"bytes": {_png(50)["bytes"]!r}, "path": None}}], "label": ["c1"]}}
        datasets.Dataset.from_dict(rows, features=features).push_to_hub({repo_id!r}, config_name="c")
        print(json.dumps(list(datasets.load_dataset({repo_id!r}, "b", split="train")["label"])))
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    assert json.loads(child.stdout.strip().splitlines()[-1]) == ["b1"]
    assert _labels_and_shades(repo_id, "c") == (["c1"], [50])
    assert not hub.server.unhandled


def test_plugin_refuses_to_run_when_an_hf_library_was_imported_first(tmp_path):
    (tmp_path / "conftest.py").write_text('from huggingface_hub import constants\npytest_plugins = ["hub_stub"]\n')
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "HF_ENDPOINT"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert child.returncode != 0
    assert "before the hub stub could set HF_ENDPOINT" in child.stdout + child.stderr
