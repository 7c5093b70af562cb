"""Embed with an exported ONNX folder (`wildreid export --format onnx`) on ONNX Runtime: the
`--runtime onnx` of evaluate.py and `wildreid index | calibrate | identify`.

`OnnxEmbedder` answers like `WildReIDModel` where embedding code asks (`model(pixel_values=...)
.embeddings`, `.config`, `.embedding_dim`, `.eval()`), so the shared embedding path runs unchanged.
Its `revision` is the source weights' hash (plus the quantization and the int8 graph's hash), which is what
galleries compare.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from modeling_wildreid import WildReIDConfig, WildReIDImageProcessor, WildReIDModelOutput

from ..threads import default_num_threads

RUNTIMES = ("torch", "onnx")
# The files `wildreid export --format onnx` writes (see wildreid.identification.onnx_export).
ONNX_FILE = "model.onnx"
EXPORT_INFO_FILE = "onnx_export.json"
PROCESSOR_FILE = "preprocessor_config.json"
CONFIG_FILE = "config.json"


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
        self.export_info = json.loads((folder / EXPORT_INFO_FILE).read_text())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or default_num_threads()
        options.inter_op_num_threads = 1
        # ONNX Runtime's own thread pool spins between ops by default, the same collapse on a busy CPU as
        # OpenMP's active wait (see wildreid.threads): let idle threads sleep.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = onnxruntime.get_available_providers()
        chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), options, providers=chosen)

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
