"""Load whatever a user wants to embed with, behind one interface (`model(pixel_values=...).embeddings`,
`model.config` with image size / mean / std / training species, `model.embedding_dim`):

- a wildreid model folder or Hub id (`outputs/run`, `org/wildreid-msv`),
- `imagenet:<timm lite name>`: an untrained wildreid embedder on ImageNet weights (the no-training baseline),
- `timm:<name>`: any timm model's pooled features with its own pretrained preprocessing, e.g.
  `timm:hf-hub:BVRA/MegaDescriptor-L-384` (needs the network; fails clearly offline),
- with `runtime="onnx"`: a folder written by `wildreid export --format onnx`, run by ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modeling_wildreid import WildReIDConfig, WildReIDImageProcessor, WildReIDModel, WildReIDModelOutput

from .onnx_runtime import RUNTIMES, OnnxEmbedder, is_onnx_export


@dataclass
class LoadedEmbedder:
    model: nn.Module
    processor: WildReIDImageProcessor
    name: str
    training_species: list[str]  # re-id species the weights were trained on (empty for baselines)


@dataclass
class _TimmConfig:
    image_size: int
    image_mean: list[float]
    image_std: list[float]
    training_species: list[str]


class TimmEmbedder(nn.Module):
    """A timm model's pooled features, L2-normalised, in wildreid's output type."""

    def __init__(self, name: str, image_size: int | None = None):
        super().__init__()
        import timm

        try:
            self.model = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as error:  # timm raises many types for network / hub failures
            raise RuntimeError(
                f"could not load timm model {name!r} with pretrained weights ({type(error).__name__}: {error}). "
                "Names with hf-hub: need network access to the Hugging Face Hub."
            ) from None
        data_config = timm.data.resolve_data_config({}, model=self.model)
        size = image_size or int(data_config["input_size"][-1])
        self.config = _TimmConfig(size, list(data_config["mean"]), list(data_config["std"]), [])

    @property
    def embedding_dim(self) -> int:
        return self.model.num_features

    def forward(self, pixel_values: torch.Tensor) -> WildReIDModelOutput:
        pooled = self.model(pixel_values)
        return WildReIDModelOutput(embeddings=F.normalize(pooled, dim=-1), pooler_output=pooled)


def load_embedder(spec: str, *, device: torch.device | str | None = None, image_size: int | None = None,
                  runtime: str = "torch") -> LoadedEmbedder:
    """Resolve a model spec (see module docstring) to an embedder in eval mode on `device`.

    runtime "onnx": `spec` is a folder written by `wildreid export --format onnx`, run by ONNX Runtime."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnx":
        if not is_onnx_export(spec):
            raise ValueError(f"--runtime onnx needs a folder written by `wildreid export --format onnx`; {spec} has "
                             "no model.onnx")
        onnx_model = OnnxEmbedder(spec)
        _check_image_size(spec, onnx_model.config.image_size, image_size)
        return LoadedEmbedder(onnx_model, onnx_model.processor, spec, list(onnx_model.config.training_species or []))
    if is_onnx_export(spec):
        raise ValueError(f"{spec} is an ONNX export (model.onnx, no torch weights): pass --runtime onnx")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if spec.startswith("imagenet:"):
        backbone = spec.split(":", 1)[1]
        config = WildReIDConfig(backbone=backbone, backbone_pretrained=True, image_size=image_size or 224)
        model, species = WildReIDModel(config), []  # ImageNet only: no re-id species seen
    elif spec.startswith("timm:"):
        model = TimmEmbedder(spec.split(":", 1)[1], image_size)
        species = []
    else:
        model = WildReIDModel.from_pretrained(spec)
        species = list(model.config.training_species or [])
        _check_image_size(spec, model.config.image_size, image_size)
    processor = WildReIDImageProcessor.from_config(model.config)
    return LoadedEmbedder(model.to(device).eval(), processor, spec, species)


def _check_image_size(spec: str, trained: int, requested: int | None) -> None:
    if requested and requested != trained:
        raise ValueError(f"{spec} was trained at {trained}px; evaluating at {requested}px "
                         "would change its preprocessing. Leave image_size unset.")
