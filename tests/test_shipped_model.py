"""The model wildreid ships (issue 31): in the package, small, loadable the Hugging Face way, and what `index`,
`evaluate.py` and `publish-model` use when `--model` is omitted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors import safe_open

from wildreid.embedding import shipped_model as shipping
from wildreid.embedding.shipped_model import MAX_SHIPPED_BYTES, SHIPPED_MODEL, save_shipped_model
from wildreid.identification.cli import main as wildreid

REPO = Path(__file__).resolve().parents[1]
DATA = "synthetic[n_species=1,n_identities=6,images_per_identity=4,image_size=96,seed=0]"


def test_the_shipped_model_is_a_small_float16_folder_with_its_card():
    size = sum(path.stat().st_size for path in SHIPPED_MODEL.rglob("*") if path.is_file())
    assert size <= MAX_SHIPPED_BYTES, f"{size / 2**20:.1f} MB"
    with safe_open(SHIPPED_MODEL / "model.safetensors", "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    config = json.loads((SHIPPED_MODEL / "config.json").read_text())
    assert config["training_species"] == ["dog", "lion", "nyala", "pig"]
    assert (SHIPPED_MODEL / "README.md").read_text() == (REPO / "model_card.md").read_text(), \
        "the shipped folder's card is model_card.md: run make ship-model (or copy it) after editing the card"


def test_auto_model_loads_it_in_float32_with_remote_code():
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(str(SHIPPED_MODEL), trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(str(SHIPPED_MODEL), trust_remote_code=True)
    assert next(model.parameters()).dtype == torch.float32
    pixels = torch.rand(2, 3, processor.image_size, processor.image_size)
    with torch.no_grad():
        embeddings = model(pixel_values=pixels).embeddings
    assert embeddings.shape[0] == 2 and torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-4)


def test_index_without_model_uses_and_names_the_shipped_model(tmp_path, capsys):
    gallery = tmp_path / "gallery"
    assert wildreid(["index", "--datasets", f"{DATA}:train", "--output", str(gallery), "--num_workers", "0"]) == 0
    assert "no --model given" in capsys.readouterr().out
    manifest = json.loads((gallery / "gallery.json").read_text())
    assert (gallery / manifest["model"]["model_name_or_path"]).resolve() == SHIPPED_MODEL  # stored relative
    assert wildreid(["identify", "--gallery", str(gallery), "--datasets", f"{DATA}:test", "--num_workers", "0"]) == 0


def test_a_copy_over_the_size_limit_is_refused_and_the_old_folder_kept(tmp_path, monkeypatch):
    destination = tmp_path / "default_model"
    destination.mkdir()
    (destination / "config.json").write_text("{}")
    monkeypatch.setattr(shipping, "MAX_SHIPPED_BYTES", 1024)
    with pytest.raises(ValueError, match="over the 0 MB"):
        save_shipped_model(SHIPPED_MODEL, destination, REPO / "model_card.md")
    assert [p.name for p in destination.iterdir()] == ["config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["default_model"]  # no staging folder left behind


def test_a_missing_shipped_model_says_how_to_recover(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shipping, "SHIPPED_MODEL", tmp_path / "absent")
    code = wildreid(["index", "--datasets", f"{DATA}:train", "--output", str(tmp_path / "g")])
    assert code == 2 and "reinstall wildreid, or pass --model" in capsys.readouterr().err


def test_publish_model_uploads_the_shipped_folder_to_the_hub(hub, capsys):
    repo_id = hub.new_repo_id("wildreid-default")
    assert wildreid(["publish-model", "--repo_id", repo_id, "--token", hub.token]) == 0
    files = set(HfApi().list_repo_files(repo_id, token=hub.token))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "modeling_wildreid.py"} <= files
