"""Export a wildreid model to ONNX for ONNX Runtime (`wildreid export --format onnx`), optionally int8.

The exported folder:
    model.onnx                 input `pixel_values` (B, 3, S, S) float32, normalised; outputs `embeddings`
                               (B, D, L2-normalised) and `pooler_output` (B, D); the batch axis is dynamic
    config.json                the source model's config (image size, mean/std, training species, width)
    preprocessor_config.json   the image processor: ONNX models get exactly the torch model's preprocessing
    onnx_export.json           source model, the SHA-256 of its weights, the SHA-256 of model.onnx as
                               written (`graph_sha256`, checked at every load: a graph replaced or truncated
                               since is refused), quantization, opset, versions

Exporter: torch's TorchScript-based `torch.onnx.export(dynamo=False)`. The model is a timm backbone plus
three small layers, traced in one piece with static control flow, so the classic exporter fits it
cleanly; optimum's exporter needs a model-type config class per architecture (a custom model type
means writing one) and the dynamo exporter needs onnxscript, an extra dependency for no gain here.

int8: ONNX Runtime static quantization (QDQ, per-channel weights, activation ranges calibrated on
`calibration` images) of the network, with the head from GeM pooling on kept in float; dynamic
quantization leaves convolution activations in float and gains little on CNNs. The model tag of an export
derives from the source weights: fp32 shares the torch model's tag (galleries accept both), int8 gets a
distinct one per int8 graph (its embeddings differ from fp32's and from another calibration's).
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..embedding.onnx_runtime import CONFIG_FILE, EXPORT_INFO_FILE, GRAPH_HASH_KEY, ONNX_FILE
from ..records import file_sha256

QUANTIZATIONS = ("int8",)
OPSET = 17


class _EmbeddingGraph(nn.Module):
    """The traced function: pixel_values -> (embeddings, pooler_output)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(pixel_values=pixel_values)
        return output.embeddings, output.pooler_output


def static_same_padding(model: nn.Module, image_size: int) -> int:
    """Replace timm's TF-style "same" convolutions, which compute their padding from the input's shape at run
    time, by ones padded with constants for `image_size` inputs; returns how many were replaced.

    Traced, the run-time padding becomes a chain of float Shape/Sub/Mul/Add/Concat ops feeding each Pad, and
    static int8 quantization quantizes that chain too: the pad amounts come out wrong, every feature map is
    shifted by a pixel or shrinks, and the embeddings lose their meaning (cosine 0.92 to fp32 on real images).
    Constant pads leave nothing to quantize but the network (and save the fp32 graph those ops as well)."""
    from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport

    replaced = 0
    for name, module in list(model.named_modules()):
        if type(module) is not Conv2dSame:
            continue
        static = Conv2dSameExport(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                  dilation=module.dilation, groups=module.groups, bias=module.bias is not None)
        static.load_state_dict(module.state_dict())
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, static)
        replaced += 1
    if replaced:
        with torch.no_grad():  # the first forward fixes each layer's padding for this input size
            model(pixel_values=torch.zeros(1, 3, image_size, image_size))
    return replaced


def require_wildreid_model(model_name_or_path: str) -> None:
    """Raise a clear ValueError unless the folder (or Hub id) holds a wildreid model."""
    from transformers import PreTrainedConfig

    path = Path(model_name_or_path)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ValueError(f"{path} is not a wildreid model folder: it has no {CONFIG_FILE}")
        if (path / ONNX_FILE).is_file() and not any(path.glob("*.safetensors")):
            raise ValueError(f"{path} is already an ONNX export; export from the original wildreid model folder")
    try:
        config, _ = PreTrainedConfig.get_config_dict(model_name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read a model config from {model_name_or_path}: {error}") from None
    if config.get("model_type") != "wildreid":
        raise ValueError(f"{model_name_or_path} is not a wildreid model (its config.json has model_type "
                         f"{config.get('model_type')!r}, expected 'wildreid'); convert MiewID checkpoints first "
                         "with python -m modeling_wildreid.convert_miewid")


def export_onnx(model_name_or_path: str, output_dir: str | os.PathLike, *, quantize: str | None = None,
                calibration: Iterable[np.ndarray] | None = None, overwrite: bool = False,
                flip_test: bool | None = None) -> Path:
    """Export a wildreid model folder or Hub id to an ONNX folder (see the module docstring).

    calibration: batches of normalised pixel_values (B, 3, S, S) float32 for int8; required with quantize.
    flip_test: bake test-time flip into the graph (or leave it out); None keeps the model config's setting.
    """
    from modeling_wildreid import WildReIDImageProcessor, WildReIDModel

    from .model_tag import weights_content_hash

    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if quantize is not None and calibration is None:
        raise ValueError("int8 quantization needs calibration images (--calibration_datasets)")
    require_wildreid_model(model_name_or_path)
    output = Path(output_dir)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace its export")
    output.mkdir(parents=True, exist_ok=True)

    model = WildReIDModel.from_pretrained(model_name_or_path,
                                          **({} if flip_test is None else {"flip_test": flip_test})).eval()
    processor = WildReIDImageProcessor.from_config(model.config)
    size = model.config.image_size
    source_revision = weights_content_hash(model.state_dict())
    static_same_padding(model, size)
    graph = _EmbeddingGraph(model).eval()
    example = torch.zeros(2, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / ONNX_FILE if quantize else output / ONNX_FILE
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript (see above).
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                graph, (example,), str(float_path), input_names=["pixel_values"],
                output_names=["embeddings", "pooler_output"], opset_version=OPSET, dynamo=False,
                dynamic_axes={name: {0: "batch"} for name in ("pixel_values", "embeddings", "pooler_output")},
            )
        if quantize:
            quantize_int8(float_path, output / ONNX_FILE, calibration)
    model.config.save_pretrained(output)
    processor.save_pretrained(output)
    info = {
        "format": "wildreid-onnx", "source": str(model_name_or_path),
        "source_revision": source_revision, "quantization": quantize,
        # Checked at every load (OnnxEmbedder), so a graph copied over this one or cut short is refused; int8
        # embeddings depend on the calibration images and settings too, so an int8 tag carries it as well.
        GRAPH_HASH_KEY: file_sha256(output / ONNX_FILE),
        "opset": OPSET, "exporter": "torch.onnx.export (TorchScript)", "torch": torch.__version__,
    }
    (output / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return output


def quantize_int8(float_path: Path, output_path: Path, calibration: Iterable[np.ndarray], *,
                  keep_head_float: bool = True, op_types: list[str] | None = None) -> None:
    """Static int8 (QDQ) of an fp32 export: per-channel int8 weights, uint8 activations whose ranges come from
    the `calibration` batches. `op_types`: the op types to quantize (default every quantizable one: the
    export's choice; bench/int8_settings.py compares it with convolutions only); `keep_head_float`: leave
    the nodes of `float_head_nodes` in float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, batches: Iterable[np.ndarray]):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": np.ascontiguousarray(batch, dtype=np.float32)}

    prepared = Path(float_path).with_name("prepared.onnx")  # beside the float graph: a temporary folder
    quant_pre_process(str(float_path), str(prepared))
    quantize_static(str(prepared), str(output_path), Reader(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=op_types,
                    nodes_to_exclude=float_head_nodes(prepared) if keep_head_float else None)


def float_head_nodes(onnx_path: Path) -> list[str]:
    """The graph's nodes from GeM pooling on (pooling, BatchNorm neck, L2 normalisation), which int8 keeps
    in float. Quantized, the pooled features and the neck's output -- the embedding itself -- are rounded to
    256 levels of one calibrated range per tensor, which cost more cosine to fp32 than the whole network's
    int8 (bench/int8_settings.py). These ops are a few thousand multiply-adds per image."""
    import onnx

    names = [node.name for node in onnx.load(str(onnx_path), load_external_data=False).graph.node]
    start = next((i for i, name in enumerate(names) if name.startswith("/model/pooling/")), None)
    if start is None:
        raise ValueError(f"{onnx_path}: no GeM pooling node (/model/pooling/...) to keep the head in float from")
    return names[start:]


def calibration_batches(dataset, processor, *, images: int = 64, batch_size: int = 16,
                        seed: int = 0) -> Iterator[np.ndarray]:
    """Normalised pixel batches of up to `images` rows of a schema dataset, drawn with a fixed seed."""
    from ..embedding.data import ReIDImageDataset, collate

    rows = np.random.default_rng(seed).permutation(len(dataset))[:images].tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ReIDImageDataset(dataset, processor), rows),
                                         batch_size=batch_size, collate_fn=collate)
    for batch in loader:
        if "pixel_values" in batch:
            yield processor.normalize(batch["pixel_values"]).numpy()


def add_export_command(commands) -> None:
    """`wildreid export`: the sub-command's flags."""
    export = commands.add_parser("export", help="export a model for ONNX Runtime (optionally int8)")
    export.add_argument("--model", required=True, help="wildreid model folder or Hub id")
    export.add_argument("--format", required=True, choices=["onnx"])
    export.add_argument("--output", required=True, help="folder to write (model.onnx + configs)")
    export.add_argument("--quantize", choices=QUANTIZATIONS, help="int8: static quantization, needs calibration images")
    export.add_argument("--calibration_datasets", nargs="+", default=[],
                        help="int8: dataset specs whose images set the activation ranges (training images, e.g. lion:train)")
    export.add_argument("--calibration_images", type=int, default=128, help="int8: images drawn from them")
    export.add_argument("--check_images", type=int, default=256,
                        help="int8: labelled images of whole individuals on which the export is compared with its "
                             "source (answers changed, top-1 both ways); 0 skips")
    export.add_argument("--check_datasets", nargs="+", default=[],
                        help="int8: where the check images come from, best images the model did not train on "
                             "(e.g. lion:val); default: held out of --calibration_datasets")
    export.add_argument("--flip_test", action="store_true",
                        help="bake test-time flip into the graph (each image and its mirror image averaged)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")
    export.add_argument("--data_dir", help="raw data of the built-in species (default $WILDREID_DATA, ../shared/data)")
    export.add_argument("--num_threads", type=int, help="torch CPU threads")


def run_export(args) -> str:
    """Run `wildreid export` from parsed flags; returns the lines to print."""
    calibration, check_set = None, None
    if args.quantize:
        if not args.calibration_datasets:
            raise ValueError("--quantize int8 needs --calibration_datasets (e.g. the training specs)")
        if args.calibration_images < 1:
            raise ValueError(f"--calibration_images must be >= 1, got {args.calibration_images}")
        if args.check_images < 0:
            raise ValueError(f"--check_images must be >= 0, got {args.check_images}")
        from hub_datasets.specs import load_specs
        from modeling_wildreid import WildReIDConfig, WildReIDImageProcessor

        from .int8_check import check_rows

        require_wildreid_model(args.model)
        processor = WildReIDImageProcessor.from_config(WildReIDConfig.from_pretrained(args.model))
        dataset = load_specs(args.calibration_datasets, data_dir=args.data_dir)
        if args.check_images and args.check_datasets:
            check_source = load_specs(args.check_datasets, data_dir=args.data_dir)
            check_set = check_source.select(check_rows(check_source, args.check_images))
        elif args.check_images:
            # At most half the images are held out for the check: the rest must still calibrate.
            held_out = check_rows(dataset, min(args.check_images, len(dataset) // 2))
            if len(held_out) == len(dataset):  # whole individuals can overshoot the half on a tiny dataset
                raise ValueError(f"--calibration_datasets hold {len(dataset)} images, all needed to hold out whole "
                                 "individuals for the int8 check; pass --check_datasets or --check_images 0")
            check_set = dataset.select(held_out)
            dataset = dataset.select(sorted(set(range(len(dataset))) - set(held_out)))
        calibration = calibration_batches(dataset, processor, images=args.calibration_images)
    folder = export_onnx(args.model, args.output, quantize=args.quantize, calibration=calibration,
                         overwrite=args.overwrite, flip_test=args.flip_test or None)
    lines = [f"exported {args.model} -> {folder / ONNX_FILE} ({args.quantize or 'fp32'})"]
    if check_set is not None and len(check_set) == 0:
        lines.append("int8 check skipped: no individual with two images among the check images")
    elif check_set is not None:
        from .int8_check import compare_int8, summary_lines

        report = compare_int8(args.model, str(folder), check_set, flip_test=args.flip_test or None)
        info_path = folder / EXPORT_INFO_FILE
        info = json.loads(info_path.read_text())
        info["int8_check"] = report
        # The export is complete by now: a rewrite cut short must not leave it without its record.
        partial = info_path.with_name(info_path.name + ".partial")
        partial.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(partial, info_path)
        lines += summary_lines(report)
    return "\n".join(lines)
