"""Embed with an exported ONNX folder (`wildreid export --format onnx`) on ONNX Runtime: the
`--runtime onnx` of evaluate.py and `wildreid index | calibrate | identify`.

`OnnxEmbedder` answers like `WildReIDModel` where embedding code asks (`model(pixel_values=...)
.embeddings`, `.config`, `.embedding_dim`, `.eval()`), so the shared embedding path runs unchanged.
Its `revision` is the source weights' hash (plus the quantization and the int8 graph's hash), which is what
galleries compare.

Loading checks the folder before ONNX Runtime sees it, each refusal a ValueError naming the file and saying to
re-export: `model.onnx` must be non-empty and have the SHA-256 that `onnx_export.json` recorded at export
(`graph_sha256`; another export's graph copied over it, or a truncated copy, is refused naming both hashes),
must load in ONNX Runtime, and must take the `image_size` its `config.json` says. Folders exported before
the fp32 graph's hash was recorded (fp32 exports before this check; int8 exports always recorded it) load
with a warning that says how to re-export: refusing them would strand every gallery built with them, and
their model tag is unchanged by a re-export of the same weights.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from modeling_wildreid import WildReIDConfig, WildReIDImageProcessor, WildReIDModelOutput

from ..records import file_sha256
from ..threads import default_num_threads

RUNTIMES = ("torch", "onnx")
# The files `wildreid export --format onnx` writes (see wildreid.identification.onnx_export).
ONNX_FILE = "model.onnx"
EXPORT_INFO_FILE = "onnx_export.json"
PROCESSOR_FILE = "preprocessor_config.json"
CONFIG_FILE = "config.json"
GRAPH_HASH_KEY = "graph_sha256"  # in EXPORT_INFO_FILE: SHA-256 of ONNX_FILE as exported


def reexport_hint(folder: Path, export_info: dict | None = None) -> str:
    source = (export_info or {}).get("source") or "<wildreid model>"
    return f"re-export it with `wildreid export --format onnx --model {source} --output {folder} --overwrite`"


def verify_graph(folder: Path, export_info: dict) -> None:
    """Refuse (ValueError) an empty `model.onnx` or one whose SHA-256 differs from the one recorded at export;
    warn when the export recorded none (see the module docstring)."""
    graph = folder / ONNX_FILE
    if graph.stat().st_size == 0:
        raise ValueError(f"{graph} is empty (0 bytes): the export was cut short or the file was truncated; "
                         + reexport_hint(folder, export_info))
    expected = export_info.get(GRAPH_HASH_KEY)
    if not expected:
        warnings.warn(f"{folder / EXPORT_INFO_FILE} records no SHA-256 of {ONNX_FILE} (exported before wildreid "
                      f"recorded one), so a replaced or damaged graph cannot be detected; "
                      + reexport_hint(folder, export_info) + " to record it", UserWarning, stacklevel=3)
        return
    actual = file_sha256(graph)
    if actual != expected:
        raise ValueError(f"{graph} has SHA-256 {actual}, but {folder / EXPORT_INFO_FILE} recorded {expected} at "
                         "export: the graph was replaced (e.g. another export copied over it), changed or truncated "
                         "since; " + reexport_hint(folder, export_info))


def is_onnx_export(path: str | os.PathLike) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


class OnnxEmbedder(nn.Module):
    """An ONNX Runtime session over an exported wildreid folder (CPU; CUDA when onnxruntime-gpu has it)."""

    def __init__(self, folder: str | os.PathLike, *, num_threads: int | None = None, providers: list[str] | None = None):
        super().__init__()
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"ONNX model folder {folder} does not exist")
        for name, what in ((ONNX_FILE, "the ONNX graph"), (CONFIG_FILE, "the model config"),
                           (PROCESSOR_FILE, "the image processor config (without it the preprocessing is unknown)"),
                           (EXPORT_INFO_FILE, "the export record (source weights hash)")):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} lacks {name}, {what}; re-export it with "
                                        f"`wildreid export --format onnx --model <wildreid model> --output {folder}`")
        try:
            import onnxruntime
        except ImportError:
            raise ImportError("--runtime onnx needs ONNX Runtime: pip install 'wildreid[onnx]'") from None
        self.folder = folder
        self.config = WildReIDConfig.from_pretrained(folder)
        self.processor = WildReIDImageProcessor.from_pretrained(folder)
        try:
            self.export_info = json.loads((folder / EXPORT_INFO_FILE).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{folder / EXPORT_INFO_FILE}: not valid JSON ({error}); "
                             + reexport_hint(folder)) from None
        if not isinstance(self.export_info, dict) or "source_revision" not in self.export_info:
            raise ValueError(f"{folder / EXPORT_INFO_FILE} is not a wildreid export record (no source_revision); "
                             + reexport_hint(folder))
        verify_graph(folder, self.export_info)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or default_num_threads()
        options.inter_op_num_threads = 1
        # ONNX Runtime's own thread pool spins between ops by default, the same collapse on a busy CPU as
        # OpenMP's active wait (see wildreid.threads): let idle threads sleep.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = onnxruntime.get_available_providers()
        chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), options, providers=chosen)
        except _onnxruntime_errors() as error:  # a damaged graph of an export without a recorded hash
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"{folder / ONNX_FILE} is not a loadable ONNX graph ({reason}); "
                             + reexport_hint(folder, self.export_info)) from None
        self._check_signature()

    def _check_signature(self) -> None:
        """The graph's input and outputs are an export's, for the image size config.json says."""
        graph, size = self.folder / ONNX_FILE, self.config.image_size
        inputs = {node.name: node.shape for node in self.session.get_inputs()}
        outputs = {node.name for node in self.session.get_outputs()}
        if "pixel_values" not in inputs or not {"embeddings", "pooler_output"} <= outputs:
            raise ValueError(f"{graph} is not a wildreid export: it takes {sorted(inputs)} and gives {sorted(outputs)} "
                             "(expected pixel_values -> embeddings, pooler_output); "
                             + reexport_hint(self.folder, self.export_info))
        shape = list(inputs["pixel_values"])
        spatial = shape[2:] if len(shape) == 4 else None
        if spatial is None or (all(isinstance(d, int) for d in spatial) and spatial != [size, size]):
            raise ValueError(f"{graph} takes pixel_values of shape {shape}, but {self.folder / CONFIG_FILE} says "
                             f"image_size {size} (batch, 3, {size}, {size}): the graph comes from another export; "
                             + reexport_hint(self.folder, self.export_info))

    @property
    def embedding_dim(self) -> int:
        return int(self.session.get_outputs()[0].shape[1])

    @property
    def quantization(self) -> str | None:
        return self.export_info.get("quantization")

    @property
    def revision(self) -> str:
        """The source weights' hash; an int8 export appends its quantization and its graph's hash: its
        embeddings differ from fp32's and from those of an export calibrated on other images (exports made
        before the graph's hash was recorded keep the tag they had)."""
        source = self.export_info["source_revision"]
        if not self.quantization:
            return source
        graph = self.export_info.get("graph_sha256")
        return f"{source}+onnx-{self.quantization}" + (f"-{graph[:12]}" if graph else "")

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> WildReIDModelOutput:
        inputs = {"pixel_values": pixel_values.detach().float().cpu().contiguous().numpy()}
        embeddings, pooled = self.session.run(["embeddings", "pooler_output"], inputs)
        return WildReIDModelOutput(embeddings=torch.from_numpy(embeddings), pooler_output=torch.from_numpy(pooled))


def _onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ONNX Runtime raises for a graph it cannot read (its pybind classes derive from
    Exception, not from one base of their own)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NoModel", "NotImplemented",
             "RuntimeException")
    return tuple(getattr(state, name) for name in names if isinstance(getattr(state, name, None), type))
