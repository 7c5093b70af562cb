"""The embedding space a gallery lives in: model name, exact weights, width, input size and preprocessing.
Cosine scores between two embedding spaces are meaningless, so galleries refuse embeddings of another."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np


class ModelMismatchError(ValueError):
    """Embeddings from one model were mixed with a gallery built by another."""


@dataclass(frozen=True)
class ModelTag:
    """Identifies the embedding space: model, exact weights, and everything that shapes the input.

    revision: a Hub commit, or `weights_content_hash(...)` ("sha256:...") for local weights.
    preprocessing: a signature of the image processor settings (`preprocessing_signature`).
    flip_test: embeddings average each image with its mirror image (`WildReIDConfig.flip_test`).
    """

    model_name_or_path: str
    revision: str
    embedding_dim: int
    image_size: int | tuple[int, ...] | None = None
    preprocessing: str = ""
    flip_test: bool = False

    def __post_init__(self):
        if isinstance(self.image_size, list):
            object.__setattr__(self, "image_size", tuple(self.image_size))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_size"] = list(self.image_size) if isinstance(self.image_size, tuple) else self.image_size
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelTag":
        missing = [name for name in ("model_name_or_path", "revision", "embedding_dim") if name not in data]
        if missing:
            raise ValueError(f"model tag lacks {missing}")
        return cls(str(data["model_name_or_path"]), str(data["revision"]), int(data["embedding_dim"]),
                   data.get("image_size"), str(data.get("preprocessing", "")), bool(data.get("flip_test", False)))

    def __str__(self) -> str:
        return (f"{self.model_name_or_path}@{self.revision} (dim {self.embedding_dim}, image_size {self.image_size}, "
                f"preprocessing {self.preprocessing or '-'}{', test-time flip' if self.flip_test else ''})")

    def same_embedding_space(self, other: "ModelTag") -> bool:
        """Equal weights, width, input size and preprocessing. The name may differ only when the
        revision is a content hash (the same weights loaded from another path)."""
        same_name = self.model_name_or_path == other.model_name_or_path or self.revision.startswith("sha256:")
        return same_name and (self.revision, self.embedding_dim, self.image_size, self.preprocessing,
                              self.flip_test) == (other.revision, other.embedding_dim, other.image_size,
                                                  other.preprocessing, other.flip_test)

    def require_same(self, other: "ModelTag", what: str) -> None:
        if not isinstance(other, ModelTag):
            raise TypeError(f"model_tag must be a ModelTag, got {type(other).__name__}")
        if not self.same_embedding_space(other):
            raise ModelMismatchError(f"{what} were embedded by {other}, but this gallery was built with {self}; "
                                     "embed them with the gallery's model or rebuild the gallery")


def weights_content_hash(state_dict: Mapping[str, Any]) -> str:
    """"sha256:<hex>" over parameter names, dtypes, shapes and bytes (numpy arrays or torch tensors)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        if hasattr(value, "detach"):  # torch tensor; viewing as bytes also covers bfloat16
            import torch

            tensor = value.detach().cpu().contiguous()
            header = f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}"
            payload = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        else:
            array = np.ascontiguousarray(value)
            header, payload = f"{name}|{array.dtype}|{tuple(array.shape)}", array.tobytes()
        digest.update(header.encode())
        digest.update(payload)
    return "sha256:" + digest.hexdigest()


# Processor flags left out of the signature at these values, and a square `size` written as the `image_size` it
# replaced, so galleries indexed before the processor had them still match the same preprocessing.
_FLAGS_BEFORE_SIGNATURE_V1 = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True}


def preprocessing_signature(settings: Mapping[str, Any]) -> str:
    """Short stable hash of image-processor settings (e.g. `processor.to_dict()`)."""
    settings = {key: value for key, value in settings.items() if _FLAGS_BEFORE_SIGNATURE_V1.get(key, ...) != value}
    size = settings.pop("size", None)
    if size is not None:
        settings.update({"image_size": size["height"]} if size["height"] == size["width"] else {"size": size})
    text = json.dumps(settings, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
