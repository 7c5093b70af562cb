"""WildReIDModel / WildReIDForMetricLearning: losses, margins, save/load, remote code, pipeline, weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

from modeling_wildreid import (
    WildReIDConfig,
    WildReIDForMetricLearning,
    WildReIDImageProcessor,
    WildReIDModel,
    dynamic_margins,
)
from modeling_wildreid.backbone_weights import _lite_checkpoint_path, remap_lite_state_dict

SMALL = dict(backbone="tf_efficientnet_lite0", image_size=64)


def tiny_config(**overrides) -> WildReIDConfig:
    return WildReIDConfig(**{**SMALL, **overrides})


def random_pixels(n=4, size=64, seed=0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_dynamic_margins_known_counts():
    counts = torch.tensor([1, 16, 81])
    # t = n^(-1/4) = 1, 1/2, 1/3 -> min-max over [1/3, 1] -> 1, 0.25, 0 -> m_min + that * (m_max - m_min)
    expected = torch.tensor([0.5, 0.2 + 0.25 * 0.3, 0.2])
    assert torch.allclose(dynamic_margins(counts, 0.2, 0.5), expected, atol=1e-6)


@pytest.mark.parametrize("counts", [[5, 5, 5], [7], [0, 0], [0, 3, 10]])
def test_dynamic_margins_degenerate_inputs_are_finite(counts):
    margins = dynamic_margins(torch.tensor(counts), 0.2, 0.5)
    assert torch.isfinite(margins).all()
    assert ((margins >= 0.2 - 1e-6) & (margins <= 0.5 + 1e-6)).all()
    if len(set(counts)) == 1:
        assert torch.allclose(margins, torch.full_like(margins, 0.5))


def test_margins_rarest_largest_and_stored_in_checkpoint(tmp_path):
    model = WildReIDForMetricLearning(tiny_config(num_identities=3))
    margins = model.set_margins_from_counts([2, 50, 9])
    assert margins.argmax() == 0 and margins.argmin() == 1
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(reloaded, WildReIDForMetricLearning)
    assert torch.allclose(reloaded.head.margins, margins)


def test_embeddings_are_normalised_and_shaped():
    model = WildReIDModel(tiny_config(embedding_dim=32)).eval()
    with torch.no_grad():
        out = model(pixel_values=random_pixels())
    assert out.embeddings.shape == (4, 32)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert out.pooler_output.shape == (4, 32)
    assert torch.allclose(torch.nn.functional.normalize(out.pooler_output), out.embeddings, atol=1e-6)
    assert out.last_hidden_state.shape[:2] == (4, 1280)


def test_loss_decreases_on_tiny_overfit_batch():
    torch.manual_seed(0)
    model = WildReIDForMetricLearning(tiny_config(num_identities=4, embedding_dim=32, arcface_scale=16.0))
    model.set_margins_from_counts([1, 2, 3, 4])
    pixels, labels = random_pixels(8, seed=1), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_metric_learning_rejects_out_of_range_labels():
    model = WildReIDForMetricLearning(tiny_config(num_identities=2))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        model(pixel_values=random_pixels(1), labels=torch.tensor([2]))


def test_imagenet_backbone_comes_from_the_builder_not_init():
    reference = torch.load(_lite_checkpoint_path("tf_efficientnet_lite0"), weights_only=True)["_conv_stem.weight"]
    assert not torch.equal(WildReIDModel(tiny_config()).backbone.conv_stem.weight, reference)
    for cls in (WildReIDModel, WildReIDForMetricLearning):
        model = cls.with_imagenet_backbone(tiny_config(num_identities=3))
        embedder = getattr(model, "wildreid", model)
        assert torch.equal(embedder.backbone.conv_stem.weight, reference)
        assert "efficientnet-lite0" in model.config.pretrained_source
    with pytest.raises(ValueError, match="with_imagenet_backbone"):
        tiny_config(backbone_pretrained=True)
    assert WildReIDConfig(**{**SMALL, "backbone_pretrained": False}).backbone == SMALL["backbone"]  # older saves


def test_save_load_round_trip_identical_embeddings(tmp_path):
    model = WildReIDForMetricLearning(tiny_config(num_identities=3)).eval()
    model.wildreid.neck.norm.running_mean.uniform_(-1, 1)  # non-trivial BN statistics must survive
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    embedder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(embedder) is WildReIDModel
    pixels = random_pixels()
    with torch.no_grad():
        assert torch.equal(model.wildreid(pixels).embeddings, embedder(pixels).embeddings)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, WildReIDImageProcessor) and processor.image_size == 64


def test_embedder_load_from_training_checkpoint_is_quiet(tmp_path, caplog):
    WildReIDForMetricLearning(tiny_config(num_identities=3)).save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        AutoModel.from_pretrained(tmp_path)
    assert not [r for r in caplog.records if "head" in r.getMessage()]


def test_mismatched_checkpoint_is_refused(tmp_path):
    WildReIDModel(tiny_config(embedding_dim=32)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["embedding_dim"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"neck\.projection\.weight: checkpoint \(32, 1280\) vs model \(16, 1280\)"):
        AutoModel.from_pretrained(tmp_path)


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    WildReIDModel(tiny_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["backbone"] = "tf_efficientnet_lite1"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match WildReIDModel"):
        AutoModel.from_pretrained(tmp_path)


def test_identity_names_survive_a_reload(tmp_path):
    names = ["lion/Ayo", "lion/Bo", "nyala/Cy"]
    model = WildReIDForMetricLearning(tiny_config(num_identities=3)).eval()
    model.config.name_identities(names)
    model.save_pretrained(tmp_path)
    loaded = WildReIDForMetricLearning.from_pretrained(tmp_path).eval()
    assert loaded.config.id2label == dict(enumerate(names))
    assert loaded.config.label2id == {name: label for label, name in enumerate(names)}
    with torch.no_grad():
        best = loaded(pixel_values=random_pixels(2)).logits.argmax(-1).tolist()
    assert {loaded.config.id2label[label] for label in best} <= set(names)
    # Configs saved before the names were kept get one generic name per identity.
    legacy = {k: v for k, v in loaded.config.to_dict().items() if k not in ("id2label", "label2id")}
    assert WildReIDConfig(**legacy).id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    with pytest.raises(ValueError, match="2 identity names for num_identities=3"):
        loaded.config.name_identities(names[:2])


def test_fresh_head_on_an_embedder_checkpoint(tmp_path):
    WildReIDModel(tiny_config()).save_pretrained(tmp_path)
    model = WildReIDForMetricLearning.from_pretrained(tmp_path, num_identities=5)
    assert model.head.weight.shape == (15, 1280)
    assert list(model.config.label2id) == [f"LABEL_{label}" for label in range(5)]  # one name per new logit
    assert torch.allclose(model.head.margins, torch.full((5,), 0.5))


def test_remote_code_loads_without_the_package(tmp_path):
    model = WildReIDForMetricLearning(tiny_config(num_identities=3)).eval()
    model.save_pretrained(tmp_path)
    pixels = random_pixels(2)
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", model.wildreid(pixels).embeddings.numpy())
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        # A development install reaches the repository through setuptools' editable finder: drop it, so
        # this process sees what a user without wildreid sees, and prove it before loading anything.
        def editable(hook):
            return str(getattr(hook, "__module__", "")).startswith("__editable__")

        sys.meta_path = [finder for finder in sys.meta_path if not editable(finder)]
        sys.path_hooks = [hook for hook in sys.path_hooks if not editable(hook)]
        sys.path = [entry for entry in sys.path if "__editable__" not in entry]
        sys.path_importer_cache.clear()
        for package in ("modeling_wildreid", "wildreid", "hub_datasets"):
            assert importlib.util.find_spec(package) is None, f"{{package}} is importable: the test proves nothing"
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoModel, pipeline
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "WildReIDModel", type(model)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        pixels = torch.from_numpy(np.load({str(tmp_path / "pixels.npy")!r}))
        with torch.no_grad():
            got = model(pixel_values=pixels).embeddings.numpy()
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-6)
        extractor = pipeline("image-feature-extraction", model={str(tmp_path)!r}, trust_remote_code=True)
        features = np.asarray(extractor(Image.new("RGB", (50, 70), (120, 30, 200))))
        assert features.shape == (1, 1280), features.shape
        loaded = sorted(n for n in sys.modules if n.split(".")[0] in ("modeling_wildreid", "wildreid", "hub_datasets"))
        assert not loaded, loaded
        print("remote-ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    workdir = tmp_path / "elsewhere"  # not the model folder, whose remote-code files would be importable
    workdir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-ok" in result.stdout


def test_pipeline_returns_the_model_embeddings(tmp_path):
    model = WildReIDModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 60, 3), dtype=np.uint8))
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    features = torch.tensor(extractor(image))[0]
    pixels = WildReIDImageProcessor.from_config(model.config)(image)["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).embeddings[0]
    assert torch.allclose(features, expected, atol=1e-5)


def test_lite_weight_mapping_predicts_lion_on_a_real_photo(shared_data):
    classifier = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    source = torch.load(_lite_checkpoint_path("tf_efficientnet_lite0"), weights_only=True)
    classifier.load_state_dict(remap_lite_state_dict(source, classifier.state_dict()))
    processor = WildReIDImageProcessor.from_config(tiny_config(image_size=224))
    photos = sorted((shared_data / "lion" / "train").glob("*/*Portrait*.png"))[:4]
    assert photos, "no lion portrait photos found"
    with torch.no_grad():
        predictions = classifier(processor(photos)["pixel_values"]).argmax(-1)
    assert (predictions == 291).all(), predictions  # ImageNet class 291: lion


def test_loss_under_bf16_autocast_keeps_the_head_in_float32():
    model = WildReIDForMetricLearning(tiny_config(num_identities=3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(pixel_values=random_pixels(2), labels=torch.tensor([0, 2]))
    assert output.logits.dtype == torch.float32 and torch.isfinite(output.loss)


def test_flip_test_embeds_an_image_and_its_mirror_alike_and_training_ignores_it():
    torch.manual_seed(0)
    plain = WildReIDModel(tiny_config()).eval()
    flipped = WildReIDModel(tiny_config(flip_test=True)).eval()
    flipped.load_state_dict(plain.state_dict())
    pixels = random_pixels(3)
    with torch.no_grad():
        out = flipped(pixels)
        mirrored = flipped(pixels.flip(-1)).embeddings
        one, other = plain(pixels).embeddings, plain(pixels.flip(-1)).embeddings
    # Mirror-invariant, and the normalised mean of the two plain views, which differ (random images are not symmetric).
    assert torch.allclose(out.embeddings, mirrored, atol=1e-5)
    assert torch.allclose(out.embeddings, torch.nn.functional.normalize(one + other, dim=-1), atol=1e-5)
    assert not torch.allclose(one, other, atol=1e-3)
    assert out.last_hidden_state.shape[0] == 3 and torch.allclose(out.embeddings.norm(dim=-1), torch.ones(3))
    plain.train(), flipped.train()
    torch.manual_seed(1)
    assert torch.allclose(flipped(pixels).embeddings, plain(pixels).embeddings, atol=1e-6)
