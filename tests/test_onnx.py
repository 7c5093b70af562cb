"""ONNX export and the ONNX Runtime embedder: parity with torch, model tags, and clear refusals."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")

from hub_datasets.synthetic import generate_rows  # noqa: E402
from modeling_wildreid import WildReIDConfig, WildReIDImageProcessor, WildReIDModel  # noqa: E402
from wildreid.embedding.onnx_runtime import OnnxEmbedder  # noqa: E402
from wildreid.identification.onnx_export import export_onnx  # noqa: E402


def _photos(count: int, size: int = 96) -> list[Image.Image]:
    rows = generate_rows(n_species=1, n_identities=count, images_per_identity=1, image_size=size, seed=3)
    return [Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB") for row in rows]


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = WildReIDModel(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64, training_species=["zebra"]))
    model.save_pretrained(root / "model")
    export_onnx(str(root / "model"), root / "fp32")
    return root


def test_fp32_export_matches_torch_at_any_batch_size(exported):
    model = WildReIDModel.from_pretrained(exported / "model").eval()
    onnx_model = OnnxEmbedder(exported / "fp32")
    pixels = WildReIDImageProcessor.from_config(model.config)(_photos(5))["pixel_values"]
    with torch.inference_mode():
        reference = model(pixel_values=pixels)
    for batch in (pixels[:1], pixels):  # exported with batch 2: the batch axis must be dynamic
        output = onnx_model(pixel_values=batch)
        assert _cosines(output.embeddings, reference.embeddings[: len(batch)]).min() >= 0.9999
    assert onnx_model.embedding_dim == model.embedding_dim
    assert onnx_model.config.training_species == ["zebra"]
    assert onnx_model.processor.to_dict() == WildReIDImageProcessor.from_config(model.config).to_dict()


def test_fp32_shares_the_torch_weights_revision_and_int8_does_not(exported):
    from wildreid.identification import weights_content_hash

    model = WildReIDModel.from_pretrained(exported / "model")
    fp32 = OnnxEmbedder(exported / "fp32")
    assert fp32.revision == weights_content_hash(model.state_dict())
    processor = WildReIDImageProcessor.from_config(model.config)
    calibration = [processor(_photos(4))["pixel_values"].numpy()]
    export_onnx(str(exported / "model"), exported / "int8", quantize="int8", calibration=calibration)
    int8 = OnnxEmbedder(exported / "int8")
    assert int8.quantization == "int8" and int8.revision != fp32.revision
    assert int8.revision.startswith(fp32.revision)
    pixels = processor(_photos(3))["pixel_values"]
    assert int8(pixel_values=pixels).embeddings.shape == (3, model.embedding_dim)
    # Another calibration gives other int8 embeddings, so another tag: galleries do not mix the two.
    other = [processor(_photos(4, size=80))["pixel_values"].numpy() * 2.0]
    export_onnx(str(exported / "model"), exported / "int8-other", quantize="int8", calibration=other)
    assert OnnxEmbedder(exported / "int8-other").revision not in (int8.revision, fp32.revision)
    # An export from before graph hashes were recorded keeps its tag, which matches neither.
    shutil.copytree(exported / "int8", exported / "int8-old")
    record = json.loads((exported / "int8-old" / "onnx_export.json").read_text())
    del record["graph_sha256"]
    (exported / "int8-old" / "onnx_export.json").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="records no SHA-256"):  # loads, saying it cannot check the graph
        assert OnnxEmbedder(exported / "int8-old").revision == f"{fp32.revision}+onnx-int8" != int8.revision


def test_int8_export_pads_with_constants_and_stays_close_to_fp32(exported):
    """TF-style "same" padding computed at run time gets quantized with the network (wrong pad amounts,
    shifted feature maps, cosine 0.92 to fp32 on real photos): exports pad with constants instead."""
    import onnx

    model = WildReIDModel.from_pretrained(exported / "model")
    processor = WildReIDImageProcessor.from_config(model.config)
    photos = processor(_photos(8))["pixel_values"]
    export_onnx(str(exported / "model"), exported / "int8-pads", quantize="int8", calibration=[photos.numpy()])
    graph = onnx.load(str(exported / "int8-pads" / "model.onnx")).graph
    constants = {tensor.name for tensor in graph.initializer}
    constants |= {name for node in graph.node if node.op_type == "Constant" for name in node.output}
    # (constant pads are usually folded into the convolutions; none may be computed from shapes)
    assert all(node.input[1] in constants for node in graph.node if node.op_type == "Pad")
    assert not [node.name for node in graph.node if node.op_type == "Shape" and "conv" in node.name.lower()]
    fp32 = OnnxEmbedder(exported / "fp32")(pixel_values=photos).embeddings
    int8 = OnnxEmbedder(exported / "int8-pads")(pixel_values=photos).embeddings
    assert _cosines(int8, fp32).min() >= 0.98


def test_int8_keeps_the_head_from_gem_pooling_on_in_float(exported):
    """Quantized, the pooled features and the neck output (the embedding itself) were rounded to 256 levels:
    the cosine to fp32 fell to 0.90 on a trained model's crops (bench/results/int8_settings.json)."""
    import onnx

    from wildreid.identification.onnx_export import float_head_nodes

    if not (exported / "int8-pads").is_dir():
        processor = WildReIDImageProcessor.from_config(WildReIDConfig.from_pretrained(exported / "model"))
        export_onnx(str(exported / "model"), exported / "int8-pads", quantize="int8",
                    calibration=[processor(_photos(8))["pixel_values"].numpy()])
    graph = onnx.load(str(exported / "int8-pads" / "model.onnx")).graph
    producer = {output: node.name for node in graph.node for output in node.output}
    quantized = {producer.get(node.input[0], "") for node in graph.node if node.op_type == "QuantizeLinear"}
    assert any(name.startswith("/model/blocks") for name in quantized)  # the network is int8
    assert not [name for name in quantized if name.startswith(("/model/pooling", "/model/neck"))]
    head = float_head_nodes(exported / "fp32" / "model.onnx")
    assert head[0].startswith("/model/pooling/") and any(name.startswith("/model/neck/") for name in head)


def test_keeping_the_head_float_needs_the_gem_pooling_nodes(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from wildreid.identification.onnx_export import float_head_nodes

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="/other/Relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="no GeM pooling node"):
        float_head_nodes(tmp_path / "other.onnx")


def test_static_same_padding_keeps_the_torch_outputs():
    from wildreid.identification.onnx_export import static_same_padding

    torch.manual_seed(0)
    model = WildReIDModel(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64)).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = model(pixel_values=pixels).embeddings
    assert static_same_padding(model, 64) > 0
    with torch.inference_mode():
        torch.testing.assert_close(model(pixel_values=pixels).embeddings, before)


def test_exporting_a_folder_that_is_not_a_wildreid_model_fails_clearly(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not a wildreid model.*model_type 'bert'"):
        export_onnx(str(tmp_path / "bert"), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a wildreid model folder: it has no config.json"):
        export_onnx(str(tmp_path / "empty"), tmp_path / "out")


def test_exporting_needs_calibration_for_int8_and_refuses_to_overwrite(exported, tmp_path):
    with pytest.raises(ValueError, match="calibration images"):
        export_onnx(str(exported / "model"), tmp_path / "q", quantize="int8")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_onnx(str(exported / "model"), exported / "fp32")


def test_loading_an_onnx_folder_without_its_processor_config_fails_clearly(exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported / "fp32", broken)
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks preprocessor_config.json, the image processor config"):
        OnnxEmbedder(broken)


@pytest.mark.real_data
def test_fp32_onnx_matches_torch_on_real_lion_photos(shared_data, tmp_path):
    torch.manual_seed(0)
    model = WildReIDModel.with_imagenet_backbone(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=224))
    model.save_pretrained(tmp_path / "model")
    export_onnx(str(tmp_path / "model"), tmp_path / "onnx")
    paths = sorted((shared_data / "lion" / "val").rglob("*.*"))[:8]
    assert paths, f"no lion val images under {shared_data / 'lion' / 'val'}"
    pixels = WildReIDImageProcessor.from_config(model.config)([str(p) for p in paths])["pixel_values"]
    with torch.inference_mode():
        reference = model.eval()(pixel_values=pixels).embeddings
    assert _cosines(OnnxEmbedder(tmp_path / "onnx")(pixel_values=pixels).embeddings, reference).min() >= 0.9999


DATA = "synthetic[n_species=1,n_identities=6,images_per_identity=4,image_size=96,seed=11]"


def test_cli_export_index_identify_and_evaluate_with_onnx_runtime(exported, tmp_path, capsys):
    from wildreid.evaluation.runner import EvaluationRequest, run_evaluation
    from wildreid.identification.cli import main

    model, onnx_dir = str(exported / "model"), str(tmp_path / "cli-fp32")
    assert main(["export", "--format", "onnx", "--model", model, "--output", onnx_dir]) == 0
    assert main(["index", "--runtime", "onnx", "--model", onnx_dir, "--datasets", f"{DATA}:train",
                 "--output", str(tmp_path / "gallery"), "--num_workers", "0"]) == 0
    # fp32 ONNX and torch embed into the same space: the torch model may query the ONNX-built gallery.
    assert main(["identify", "--gallery", str(tmp_path / "gallery"), "--model", model, "--datasets", f"{DATA}:test",
                 "--output", str(tmp_path / "torch.json"), "--num_workers", "0"]) == 0
    assert main(["identify", "--gallery", str(tmp_path / "gallery"), "--runtime", "onnx", "--datasets", f"{DATA}:test",
                 "--output", str(tmp_path / "onnx.json"), "--num_workers", "0"]) == 0
    by_torch, by_onnx = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("torch", "onnx"))
    assert [r["candidates"][0]["identity"] for r in by_torch["results"]] == \
        [r["candidates"][0]["identity"] for r in by_onnx["results"]]
    # int8 embeddings differ: the fp32 gallery refuses them, naming both models.
    int8_dir = str(tmp_path / "cli-int8")
    assert main(["export", "--format", "onnx", "--model", model, "--output", int8_dir, "--quantize", "int8",
                 "--calibration_datasets", f"{DATA}:train", "--calibration_images", "8"]) == 0
    # The int8 export was compared with its source on held-out labelled images, printed and recorded.
    check = json.loads((tmp_path / "cli-int8" / "onnx_export.json").read_text())["int8_check"]
    assert check["images"] >= 4 and 0.5 < check["mean_cosine"] <= 1.0
    row = check["species"]["synthetic-stripes"]
    assert row["queries"] == check["images"] and row["lost"] == len(row["lost_fp32_margins"])
    assert "int8 check on" in capsys.readouterr().out
    assert main(["identify", "--gallery", str(tmp_path / "gallery"), "--runtime", "onnx", "--model", int8_dir,
                 "--datasets", f"{DATA}:test", "--num_workers", "0"]) == 2
    assert "+onnx-int8" in capsys.readouterr().err
    # A torch run pointed at an ONNX folder, and the reverse, say what to do.
    assert main(["identify", "--gallery", str(tmp_path / "gallery"), "--model", onnx_dir,
                 "--datasets", f"{DATA}:test"]) == 2
    assert "pass --runtime onnx" in capsys.readouterr().err
    assert main(["index", "--runtime", "onnx", "--model", model, "--datasets", f"{DATA}:train",
                 "--output", str(tmp_path / "g2")]) == 2
    assert "wildreid export --format onnx" in capsys.readouterr().err

    results = {runtime: run_evaluation(EvaluationRequest(datasets=[f"{DATA}:test"], model=path, runtime=runtime,
                                                         num_workers=0))
               for runtime, path in (("torch", model), ("onnx", onnx_dir))}
    torch_mean, onnx_mean = results["torch"]["mean"], results["onnx"]["mean"]
    assert torch_mean and {k: pytest.approx(v, abs=1e-4) for k, v in torch_mean.items()
                           if isinstance(v, float)} == {k: v for k, v in onnx_mean.items() if isinstance(v, float)}


def test_an_int8_check_whose_record_cannot_be_written_leaves_the_export_loadable(exported, tmp_path, monkeypatch):
    from pathlib import Path

    from wildreid.identification.cli import main

    write_text = Path.write_text

    def disk_full_for_partial_files(self, *args, **kwargs):
        if self.name.endswith(".partial"):
            raise OSError(28, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full_for_partial_files)
    folder = tmp_path / "int8"
    assert main(["export", "--format", "onnx", "--model", str(exported / "model"), "--output", str(folder),
                 "--quantize", "int8", "--calibration_datasets", f"{DATA}:train", "--calibration_images", "8"]) != 0
    info = json.loads((folder / "onnx_export.json").read_text())
    assert info["quantization"] == "int8" and "int8_check" not in info
    OnnxEmbedder(folder)  # the export itself is whole and loads


def test_an_int8_check_that_would_hold_out_every_calibration_image_is_refused(exported, tmp_path, capsys):
    from wildreid.identification.cli import main

    one_individual = "synthetic[n_species=1,n_identities=2,images_per_identity=4,image_size=96,seed=2,max_identities=1]"
    assert main(["export", "--format", "onnx", "--model", str(exported / "model"), "--output", str(tmp_path / "q"),
                 "--quantize", "int8", "--calibration_datasets", one_individual]) == 2
    assert "--check_images 0" in capsys.readouterr().err


def test_an_export_with_flip_test_bakes_the_flip_in_and_says_so(tmp_path):
    from wildreid.embedding import load_embedder

    torch.manual_seed(0)
    WildReIDModel(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64)).save_pretrained(tmp_path / "model")
    export_onnx(str(tmp_path / "model"), tmp_path / "fp32", flip_test=True)  # a plain model, flipped at export
    model = WildReIDModel.from_pretrained(tmp_path / "model", flip_test=True)
    onnx_model = OnnxEmbedder(tmp_path / "fp32")
    pixels = WildReIDImageProcessor.from_config(model.config)(_photos(3))["pixel_values"]
    with torch.inference_mode():
        reference = model.eval()(pixel_values=pixels).embeddings
    for batch in (pixels[:1], pixels):  # the mirrored half of the batch must follow a dynamic batch axis
        assert _cosines(onnx_model(pixel_values=batch).embeddings, reference[: len(batch)]).min() >= 0.9999
    assert onnx_model.config.flip_test
    with pytest.raises(ValueError, match="exported with test-time flip"):
        load_embedder(str(tmp_path / "fp32"), runtime="onnx", flip_test=False)


def test_cli_flip_test_export_builds_a_gallery_the_torch_model_queries_with_flip(exported, tmp_path):
    from wildreid.identification import Gallery
    from wildreid.identification.cli import main

    model, onnx_dir = str(exported / "model"), str(tmp_path / "flip-fp32")
    assert main(["export", "--format", "onnx", "--model", model, "--output", onnx_dir, "--flip_test"]) == 0
    assert main(["index", "--runtime", "onnx", "--model", onnx_dir, "--datasets", f"{DATA}:train",
                 "--output", str(tmp_path / "gallery"), "--num_workers", "0"]) == 0
    assert Gallery.load(tmp_path / "gallery").model_tag.flip_test
    # The torch model is loaded with the gallery's flip, so its embeddings share the gallery's space.
    assert main(["identify", "--gallery", str(tmp_path / "gallery"), "--model", model, "--datasets", f"{DATA}:test",
                 "--num_workers", "0"]) == 0


# ---------------------------------------------------------------------------------- the graph checked at load


@pytest.fixture(scope="module")
def other_export(tmp_path_factory):
    """Another model's fp32 export, at another input size (32 px against the `exported` fixture's 64)."""
    root = tmp_path_factory.mktemp("onnx-other")
    torch.manual_seed(1)
    WildReIDModel(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=32)).save_pretrained(root / "model")
    return export_onnx(str(root / "model"), root / "fp32")


def _copy_export(exported, tmp_path, name: str = "copy"):
    folder = tmp_path / name
    shutil.copytree(exported / "fp32", folder)
    return folder


def _forget_graph_hash(folder) -> None:
    """Make the folder look exported before wildreid recorded the fp32 graph's hash."""
    record = json.loads((folder / "onnx_export.json").read_text())
    del record["graph_sha256"]
    (folder / "onnx_export.json").write_text(json.dumps(record))


def test_the_export_records_the_graph_hash_and_a_swapped_graph_is_refused_naming_both(exported, other_export,
                                                                                     tmp_path, capsys):
    import hashlib

    from wildreid.identification.cli import main

    recorded = json.loads((exported / "fp32" / "onnx_export.json").read_text())["graph_sha256"]
    assert recorded == hashlib.sha256((exported / "fp32" / "model.onnx").read_bytes()).hexdigest()
    swapped = _copy_export(exported, tmp_path, "swapped")
    shutil.copyfile(other_export / "model.onnx", swapped / "model.onnx")  # another model's export copied over it
    actual = hashlib.sha256((swapped / "model.onnx").read_bytes()).hexdigest()
    with pytest.raises(ValueError) as refused:
        OnnxEmbedder(swapped)
    message = str(refused.value)
    assert str(swapped / "model.onnx") in message and recorded in message and actual in message
    assert "re-export" in message and "--overwrite" in message
    # The command line says the same as `error: ...`, exit 2, and writes nothing.
    assert main(["index", "--runtime", "onnx", "--model", str(swapped), "--datasets", f"{DATA}:train",
                 "--output", str(tmp_path / "gallery"), "--num_workers", "0"]) == 2
    assert f"error: {swapped / 'model.onnx'} has SHA-256 {actual}" in capsys.readouterr().err
    assert not (tmp_path / "gallery" / "gallery.json").exists()


def test_an_empty_or_truncated_graph_is_refused_naming_the_file(exported, tmp_path):
    empty = _copy_export(exported, tmp_path, "empty")
    (empty / "model.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model.onnx is empty \(0 bytes\).*re-export it with `wildreid export"):
        OnnxEmbedder(empty)
    truncated = _copy_export(exported, tmp_path, "truncated")
    data = (truncated / "model.onnx").read_bytes()
    (truncated / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.onnx has SHA-256 .* truncated .*re-export"):
        OnnxEmbedder(truncated)
    # Without a recorded hash (an older export) ONNX Runtime's own failure is turned into the same kind of message.
    _forget_graph_hash(truncated)
    with pytest.warns(UserWarning, match="records no SHA-256"), \
            pytest.raises(ValueError, match=r"truncated/model.onnx is not a loadable ONNX graph .*re-export"):
        OnnxEmbedder(truncated)


def test_a_graph_exported_for_another_input_size_is_refused(exported, other_export, tmp_path):
    mixed = _copy_export(exported, tmp_path, "mixed")
    shutil.copyfile(other_export / "model.onnx", mixed / "model.onnx")
    _forget_graph_hash(mixed)  # an older export: only the graph's own input shape can tell
    with pytest.warns(UserWarning, match="records no SHA-256"), \
            pytest.raises(ValueError, match=r"takes pixel_values of shape \['batch', 3, 32, 32\].*image_size 64.*"
                                            r"another export; re-export"):
        OnnxEmbedder(mixed)


def test_an_export_without_a_recorded_graph_hash_loads_with_a_warning_saying_how_to_re_export(exported, tmp_path):
    old = _copy_export(exported, tmp_path, "old")
    _forget_graph_hash(old)
    with pytest.warns(UserWarning, match=r"records no SHA-256 of model.onnx .*wildreid export --format onnx "
                                         r"--model .* --overwrite"):
        model = OnnxEmbedder(old)
    assert model.revision == OnnxEmbedder(exported / "fp32").revision  # same weights, same tag
