"""Load whatever a user wants to embed with, behind one interface (`model(pixel_values=...).embeddings`,
`model.config` with image size / mean / std / training species, `model.embedding_dim`):

- a wildreid model folder or Hub id (`outputs/run`, `org/wildreid-msv`),
- `imagenet:<timm lite name>`: an untrained wildreid embedder on ImageNet weights (the no-training baseline),
- `timm:<name>`: any timm model's pooled features with its own pretrained preprocessing, e.g.
  `timm:hf-hub:BVRA/MegaDescriptor-L-384` (needs the network; fails clearly offline),
- with `runtime="onnx"`: a folder written by `wildreid export --format onnx`, run by ONNX Runtime.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modeling_wildreid import WildReIDConfig, WildReIDImageProcessor, WildReIDModel, WildReIDModelOutput

from .onnx_runtime import RUNTIMES, OnnxEmbedder, is_onnx_export

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # org/name; anything else can only be a local path


@dataclass
class LoadedEmbedder:
    model: nn.Module
    processor: WildReIDImageProcessor
    name: str
    training_species: list[str]  # re-id species the weights were trained on (empty for baselines)

    @property
    def flip_test(self) -> bool:
        """Whether embeddings average each image with its mirror image (`WildReIDConfig.flip_test`)."""
        return bool(getattr(self.model.config, "flip_test", False))


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


def check_model_reference(spec: str) -> Path | None:
    """The local folder `spec` names (checked to hold config.json), or None for an `org/name` Hub id.

    A path that looks local (absolute, `./`, `~`, existing, or not of the `org/name` form) is never sent
    to the Hub; FileNotFoundError names it when it is not a model folder."""
    local = Path(spec).expanduser()
    if not (local.is_absolute() or spec.startswith((".", "~")) or local.exists() or not _HUB_ID.match(spec)):
        return None
    if not local.is_dir():
        raise FileNotFoundError(f"model {spec}: no such folder" if not local.exists() else
                                f"model {spec}: not a folder (a wildreid model is a folder holding config.json)")
    if not (local / "config.json").is_file():
        raise FileNotFoundError(f"model {local}: no config.json in this folder; is it a wildreid model folder?")
    return local


def load_wildreid_model(spec: str) -> WildReIDModel:
    """`WildReIDModel.from_pretrained(spec)` with errors that name the folder or file (see
    `check_model_reference`); unreadable weights or config name the file."""
    from safetensors import SafetensorError

    local = check_model_reference(spec)
    if local is None:
        try:
            return WildReIDModel.from_pretrained(spec)
        except (OSError, ValueError) as error:
            raise ValueError(f"model {spec}: no local folder of that name, and loading it as a Hub repo id failed "
                             f"({type(error).__name__}: {error})") from None
    try:
        return WildReIDModel.from_pretrained(str(local))
    except SafetensorError as error:
        raise ValueError(f"cannot load model weights {local / 'model.safetensors'}: {error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"cannot load model config {local / 'config.json'}: not valid JSON ({error})") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load model {local}: {type(error).__name__}: {error}") from None


def load_embedder(spec: str, *, device: torch.device | str | None = None, image_size: int | None = None,
                  runtime: str = "torch", flip_test: bool | None = None) -> LoadedEmbedder:
    """Resolve a model spec (see module docstring) to an embedder in eval mode on `device`.

    runtime "onnx": `spec` is a folder written by `wildreid export --format onnx`, run by ONNX Runtime.
    flip_test: average each image's embedding with its mirror image's (`WildReIDConfig.flip_test`); None keeps
    the model's own setting. An ONNX export keeps the setting it was exported with."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnx":
        if not is_onnx_export(spec):
            raise ValueError(f"--runtime onnx needs a folder written by `wildreid export --format onnx`; {spec} has "
                             "no model.onnx")
        onnx_model = OnnxEmbedder(spec)
        _check_image_size(spec, onnx_model.config.image_size, image_size)
        loaded = LoadedEmbedder(onnx_model, onnx_model.processor, spec, list(onnx_model.config.training_species or []))
        if flip_test is not None and bool(flip_test) != loaded.flip_test:
            raise ValueError(f"{spec} was exported {'with' if loaded.flip_test else 'without'} test-time flip; "
                             f"export the model again with{'' if flip_test else 'out'} --flip_test to change it")
        return loaded
    if is_onnx_export(spec):
        raise ValueError(f"{spec} is an ONNX export (model.onnx, no torch weights): pass --runtime onnx")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if spec.startswith("imagenet:"):
        backbone = spec.split(":", 1)[1]
        config = WildReIDConfig(backbone=backbone, image_size=image_size or 224)
        model, species = WildReIDModel.with_imagenet_backbone(config), []  # ImageNet only: no re-id species seen
    elif spec.startswith("timm:"):
        if flip_test:
            raise ValueError(f"test-time flip needs a wildreid model; {spec} is a bare timm backbone")
        model = TimmEmbedder(spec.split(":", 1)[1], image_size)
        species = []
    else:
        model = load_wildreid_model(spec)
        species = list(model.config.training_species or [])
        _check_image_size(spec, model.config.image_size, image_size)
    if flip_test is not None and isinstance(model, WildReIDModel):
        model.config.flip_test = bool(flip_test)
    processor = WildReIDImageProcessor.from_config(model.config)
    return LoadedEmbedder(model.to(device).eval(), processor, spec, species)


def _check_image_size(spec: str, trained: int, requested: int | None) -> None:
    if requested and requested != trained:
        raise ValueError(f"{spec} was trained at {trained}px; evaluating at {requested}px "
                         "would change its preprocessing. Leave image_size unset.")
