"""MiewID -> wildreid conversion: embedding parity against a MiewID-structured reference, key handling, errors.

The reference network is built here from MiewID's documented structure (REFERENCE §1; `MiewIdNet` in
WildMeOrg/wbia-plugin-miew-id): timm backbone with classifier and global pool replaced by identities,
`forward_features` -> GeM (own p) -> flatten -> BatchNorm1d, plus the Hub models' unused `final` head.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from transformers import AutoImageProcessor

from modeling_wildreid import WildReIDConfig, WildReIDImageProcessor, WildReIDModel
from modeling_wildreid.backbone_weights import load_imagenet_weights
from modeling_wildreid.convert_miewid import (
    CANDIDATE_BACKBONES,
    HEAD_REASON,
    MiewIDConversionError,
    backbone_signature,
    convert_miewid_state_dict,
    load_miewid_checkpoint,
    main,
    plan_conversion,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_BACKBONE = "tf_efficientnet_lite0"  # ImageNet weights offline; shares its tensors with efficientnet_lite0
IMAGE_SIZE = 440
GEM_P = 2.7
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MIN_COSINE = 0.9999
ATOL = 1e-4


class ReferenceGeM(nn.Module):
    def __init__(self, p: float, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x):
        return F.avg_pool2d(x.clamp(min=self.eps).pow(self.p), (x.size(-2), x.size(-1))).pow(1.0 / self.p)


class ReferenceMiewID(nn.Module):
    """MiewID's network: its state dict has backbone.*, pooling.p, bn.*, final.* (MiewID's own key names)."""

    def __init__(self, backbone: str, p: float = GEM_P, n_classes: int = 10):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False)  # built with its classifier, as MiewID does
        width = self.backbone.num_features
        self.backbone.classifier = nn.Identity()
        self.backbone.global_pool = nn.Identity()
        self.pooling = ReferenceGeM(p)
        self.bn = nn.BatchNorm1d(width)
        self.final = nn.Linear(width, n_classes)

    def forward(self, x):
        features = self.backbone.forward_features(x)
        return self.bn(self.pooling(features).flatten(1))


def miewid_like_reference(backbone: str = SMALL_BACKBONE) -> ReferenceMiewID:
    """ImageNet backbone weights (a random backbone maps every photo to nearly the same vector, which would let
    any conversion pass), GeM p = 2.7, and a BatchNorm neck with real running statistics and random affine."""
    torch.manual_seed(0)
    reference = ReferenceMiewID(backbone)
    load_imagenet_weights(backbone, reference.backbone)
    with torch.no_grad():
        reference.eval()
        pooled = reference.pooling(reference.backbone.forward_features(torch.randn(8, 3, 96, 96))).flatten(1)
        reference.bn.train()
        for _ in range(4):
            reference.bn(pooled * 1.5 + 0.2)
        reference.bn.weight.uniform_(0.5, 1.5)
        reference.bn.bias.normal_(0.0, 0.3)
    assert reference.bn.num_batches_tracked == 4 and reference.bn.running_var.mean() != 1.0
    return reference.eval()


def reference_pixels(paths, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Independent preprocessing: PIL bilinear squash to size x size, then ImageNet normalisation."""
    batch = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        batch.append((np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD)
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def reference():
    return miewid_like_reference()


@pytest.fixture(scope="module")
def checkpoints(reference, tmp_path_factory):
    """The reference's state dict in MiewID's layout, as safetensors and as a torch .bin."""
    folder = tmp_path_factory.mktemp("miewid")
    state = {k: v.detach().clone().contiguous() for k, v in reference.state_dict().items()}
    save_file(state, folder / "miewid.safetensors")
    torch.save(state, folder / "miewid.bin")
    return {"state": state, "safetensors": folder / "miewid.safetensors", "bin": folder / "miewid.bin"}


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "modeling_wildreid.convert_miewid", *map(str, args)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )


def assert_parity(reference, model, processor, images, size=IMAGE_SIZE):
    """wildreid's processor + converted model vs the independent preprocessing + reference; returns figures."""
    with torch.no_grad():
        expected = reference(reference_pixels(images, size))
        output = model(pixel_values=processor(images)["pixel_values"])
    cosine = F.cosine_similarity(output.pooler_output, expected, dim=-1)
    max_abs = (output.pooler_output - expected).abs().max().item()
    assert cosine.min() >= MIN_COSINE, cosine
    assert torch.allclose(output.pooler_output, expected, atol=ATOL, rtol=ATOL), max_abs
    assert torch.allclose(output.embeddings, F.normalize(expected, dim=-1), atol=1e-5)
    # The comparison must be able to fail: the images give distinct embeddings ...
    similarity = F.normalize(expected, dim=-1) @ F.normalize(expected, dim=-1).T
    assert similarity[~torch.eye(len(images), dtype=torch.bool)].max() < 0.99
    # ... and GeM's p left at wildreid's default instead of MiewID's would be caught.
    with torch.no_grad():
        model.pooling.p.fill_(3.0)
        wrong_p = model.forward_head(output.last_hidden_state)
        model.pooling.p.fill_(GEM_P)
    assert (wrong_p - expected).abs().max() > 100 * ATOL
    print(f"\nparity on {len(images)} images: min cosine {cosine.min().item():.7f}, max |diff| {max_abs:.2e}")
    return cosine.min().item(), max_abs


def real_images(root: Path):
    lions = sorted((root / "lion" / "val").glob("*/*.png"))[:3]
    nyalas = sorted((root / "nyala" / "test").glob("*/*.jpg"))[:3]
    assert len(lions) == 3 and len(nyalas) == 3, "expected lion/val and nyala/test images"
    return lions + nyalas


def test_cli_and_api_reproduce_miewid_embeddings_on_real_images(reference, checkpoints, shared_data, tmp_path):
    images = real_images(shared_data)
    output = tmp_path / "converted"
    result = run_cli("--checkpoint", checkpoints["bin"], "--output", output, "--backbone", SMALL_BACKBONE)
    assert result.returncode == 0, result.stderr
    assert f"final.weight: {HEAD_REASON}" in result.stdout and f"final.bias: {HEAD_REASON}" in result.stdout
    assert (output / "model.safetensors").is_file() and (output / "preprocessor_config.json").is_file()
    from_cli = WildReIDModel.from_pretrained(output).eval()
    info = from_cli.config.converted_from
    assert info["format"] == "miewid" and info["backbone"] == SMALL_BACKBONE and info["file"] == "miewid.bin"
    assert len(info["sha256"]) == 64 and info["backbone_inferred"] is False
    assert from_cli.config.image_size == IMAGE_SIZE and from_cli.config.gem_eps == 1e-6
    assert from_cli.config.embedding_dim is None and from_cli.embedding_dim == 1280
    assert AutoImageProcessor.from_pretrained(output).fast_downscale is False  # MiewID's one-step resize
    # The saved folder as a user loads it: its own image processor config.
    assert_parity(reference, from_cli, AutoImageProcessor.from_pretrained(output), images)

    # The API on the safetensors copy gives the same tensors, hence the same embeddings.
    state, provenance = load_miewid_checkpoint(checkpoints["safetensors"])
    from_api = convert_miewid_state_dict(state, backbone=SMALL_BACKBONE, provenance=provenance)
    assert from_api.config.converted_from["dropped_keys"] == {"final.weight": HEAD_REASON, "final.bias": HEAD_REASON}
    assert from_api.config.image_mean == from_cli.config.image_mean == [0.485, 0.456, 0.406]
    cli_tensors = from_cli.state_dict()
    assert all(torch.equal(tensor, cli_tensors[key]) for key, tensor in from_api.state_dict().items())


def test_parity_on_synthetic_images_and_training_checkpoint_wrappers(reference, checkpoints, tmp_path):
    rng = np.random.default_rng(0)
    images = []
    for i, (width, height) in enumerate([(300, 200), (150, 420), (520, 520), (90, 60)]):
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1.0, 3)
        noise = rng.normal(0, 40, (height, width, 3))
        array = np.clip(ramp + noise + rng.uniform(0, 80), 0, 255).astype(np.uint8)
        images.append(tmp_path / f"synthetic_{i}.png")
        Image.fromarray(array).save(images[-1])
    # A resumable MiewID training checkpoint of a DataParallel/SWA model: wrapper, "module." prefix, n_averaged.
    wrapped = {
        "epoch": 3,
        "best_score": 0.5,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "model_state_dict": {
            **{"module." + k: v for k, v in checkpoints["state"].items()},
            "n_averaged": torch.tensor(7),
        },
    }
    torch.save(wrapped, tmp_path / "checkpoint_latest.pth")
    state, provenance = load_miewid_checkpoint(tmp_path / "checkpoint_latest.pth")
    assert provenance["wrapper"] == "model_state_dict" and provenance["stripped_prefix"] == "module."
    assert provenance["ignored_entries"] == ["best_score", "epoch", "optimizer_state_dict"]
    # A smaller input keeps this test fast; the GeM + BN neck is size-independent.
    model = convert_miewid_state_dict(state, backbone=SMALL_BACKBONE, image_size=224, provenance=provenance)
    assert "dropped: stochastic weight averaging" in model.config.converted_from["dropped_keys"]["n_averaged"]
    assert_parity(reference, model, WildReIDImageProcessor.from_config(model.config), images, size=224)


def test_default_efficientnetv2_rw_m_layout_is_inferred_and_maps_every_key():
    # MiewID's published backbone, built on the meta device: keys and shapes only, no weights.
    with torch.device("meta"):
        reference = ReferenceMiewID("efficientnetv2_rw_m")
        expected_keys = set(WildReIDModel(WildReIDConfig(backbone="efficientnetv2_rw_m")).state_dict())
    state = dict(reference.state_dict())
    state["pooling.p"] = torch.tensor([GEM_P])
    assert state["bn.weight"].shape == (2152,)
    mapped, report = plan_conversion(state)
    assert report["backbone"] == "efficientnetv2_rw_m" and report["backbone_inferred"] is True
    assert set(mapped) == expected_keys
    assert report["dropped_keys"] == {"final.weight": HEAD_REASON, "final.bias": HEAD_REASON}
    assert report["gem_p"] == pytest.approx(GEM_P)
    assert mapped["neck.norm.running_var"] is state["bn.running_var"]
    # GeM installed as timm's global_pool (a re-exported layout) maps to the same place.
    alias = {("backbone.global_pool.p" if k == "pooling.p" else k): v for k, v in state.items()}
    assert set(plan_conversion(alias)[0]) == expected_keys


def test_twin_architectures_are_refused_rather_than_guessed(checkpoints):
    with pytest.raises(MiewIDConversionError, match=r"(?s)efficientnet_lite0, tf_efficientnet_lite0.*--backbone"):
        plan_conversion(checkpoints["state"])


def test_only_tf_twins_share_tensors_among_candidates():
    # infer_backbone stops at the first fit plus its `tf_` twin; that is only sound while no other pair collides.
    owners = {}
    for name in CANDIDATE_BACKBONES:
        owners.setdefault(frozenset(backbone_signature(name)[0]), []).append(name)
    for names in owners.values():
        if len(names) > 1:
            assert len(names) == 2 and "tf_" + names[0] == names[1], names


def test_truncated_checkpoints_fail_naming_the_file(checkpoints, tmp_path, capsys):
    for kind in ("safetensors", "bin"):
        data = checkpoints[kind].read_bytes()
        broken = tmp_path / f"broken.{kind}"
        broken.write_bytes(data[: len(data) // 2])
        with pytest.raises(MiewIDConversionError, match=rf"broken\.{kind}: not a readable"):
            load_miewid_checkpoint(broken)
    assert main(["--checkpoint", str(broken), "--output", str(tmp_path / "out")]) == 1
    assert "broken.bin: not a readable" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pickled_objects_are_never_loaded(checkpoints, tmp_path):
    torch.save({**checkpoints["state"], "config": Path("/tmp/anything")}, tmp_path / "objects.bin")
    with pytest.raises(MiewIDConversionError, match=r"(?s)objects\.bin: holds Python objects.*weights_only=True"):
        load_miewid_checkpoint(tmp_path / "objects.bin")


def test_missing_keys_are_named(checkpoints, tmp_path, capsys):
    state = {k: v for k, v in checkpoints["state"].items() if k not in ("bn.running_var", "backbone.conv_stem.weight")}
    save_file(state, tmp_path / "missing.safetensors")
    code = main(["--checkpoint", str(tmp_path / "missing.safetensors"), "--output", str(tmp_path / "out"),
                 "--backbone", SMALL_BACKBONE])
    error = capsys.readouterr().err
    assert code == 1 and "2 problems" in error
    assert "backbone.conv_stem.weight: missing from checkpoint (expected (32, 3, 3, 3))" in error
    assert "bn.running_var: missing from checkpoint (expected (1280,))" in error
    # Without --backbone the search reports the closest architecture and the same missing tensor.
    closest = r"(?s)Closest: 'efficientnet_lite0'.*backbone\.conv_stem\.weight: missing"
    with pytest.raises(MiewIDConversionError, match=closest):
        plan_conversion(state)


def test_wrong_shapes_are_named_with_both_shapes(checkpoints):
    state = dict(checkpoints["state"])
    state["bn.weight"] = torch.ones(1281)
    state["pooling.p"] = torch.tensor([3.0, 3.0])
    state["backbone.conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    with pytest.raises(MiewIDConversionError) as caught:
        plan_conversion(state, backbone=SMALL_BACKBONE)
    message = str(caught.value)
    assert "bn.weight: checkpoint (1281,) vs expected (1280,)" in message
    assert "pooling.p: checkpoint (2,) vs expected (1,)" in message
    expected = "backbone.conv_head.weight: checkpoint (1280, 320, 3, 3) vs 'tf_efficientnet_lite0' (1280, 320, 1, 1)"
    assert expected in message


def test_unknown_keys_fail_unless_allowed_and_then_are_reported(checkpoints):
    state = {**checkpoints["state"], "arcface.kernel": torch.zeros(1280, 5)}
    with pytest.raises(MiewIDConversionError, match=r"(?s)arcface\.kernel: unknown key.*--allow-unknown"):
        plan_conversion(state, backbone=SMALL_BACKBONE)
    _, report = plan_conversion(state, backbone=SMALL_BACKBONE, allow_unknown=True)
    assert report["dropped_keys"]["arcface.kernel"] == "dropped: unknown key (--allow-unknown)"
    with pytest.raises(MiewIDConversionError, match=r"(?s)no backbone\.\* tensors.*arcface\.kernel"):
        plan_conversion({"arcface.kernel": torch.zeros(1)})


def test_missing_file_and_offline_hub_id_fail_clearly(tmp_path):
    with pytest.raises(MiewIDConversionError, match=r"nowhere\.safetensors: file not found"):
        load_miewid_checkpoint(tmp_path / "nowhere.safetensors")
    result = run_cli(
        "--checkpoint", "conservationxlabs/miewid-msv2", "--output", tmp_path / "out",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")},
    )
    assert result.returncode == 1
    assert "could not fetch a checkpoint of Hub repo 'conservationxlabs/miewid-msv2'" in result.stderr
    assert "model.safetensors: LocalEntryNotFoundError" in result.stderr
    assert "Traceback" not in result.stderr
