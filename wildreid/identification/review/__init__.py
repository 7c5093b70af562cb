"""The review app: a reviewer sees the top-k candidate individuals for a query with the evidence for each
match, and decides "same as X", "new individual" or "skip" (`wildreid app --gallery DIR`).

- `session`: proposals, decisions, undo, gallery updates (no browser needed; what the tests drive)
- `uploads`: query photos: size limit, SHA-256, safe decoding, content-addressed copies
- `scoring`: ranking of individuals for one query by the gallery's methods, as `wildreid identify` ranks
- `audit`: the JSONL audit log and the gallery's content revision
- `drawing`: side-by-side and correspondence pictures
- `ui`: the Gradio interface over a session (every user-derived string escaped by `ui.literal`)
- `serving`: the loud warning beyond loopback, the optional login, the uploads folder removed at exit
"""
from __future__ import annotations

import os

from .session import ReviewSession


def load_model_embedder(model: str, runtime: str = "torch"):
    """(embed, model tag) for a model folder or Hub id (runtime "onnx": an ONNX export folder), on CPU."""
    from wildreid.embedding.embedders import load_embedder

    return crop_embedder(load_embedder(model, device="cpu", runtime=runtime))


def crop_embedder(embedder):
    """(embed, model tag) of a loaded embedder: embed maps PIL crops to (N, D) embeddings through the
    model's own image processor."""
    import torch

    from ..workflows import model_tag

    @torch.inference_mode()
    def embed(crops):
        pixels = torch.stack([embedder.processor.resize(crop) for crop in crops])
        return embedder.model(pixel_values=embedder.processor.normalize(pixels)).embeddings.float().numpy()

    return embed, model_tag(embedder)


def open_session(gallery_dir: str | os.PathLike, model: str | None = None, runtime: str = "torch",
                 **kwargs) -> ReviewSession:
    """A session on a gallery folder, embedding with `model` (default: the model the gallery was built with,
    refused if its weights or preprocessing differ from the gallery's)."""
    from ..gallery import Gallery
    from ..workflows import load_gallery_embedder

    embedder = load_gallery_embedder(Gallery.load(gallery_dir), gallery_dir, model, runtime, device="cpu")
    return ReviewSession(gallery_dir, *crop_embedder(embedder), **kwargs)


__all__ = ["ReviewSession", "load_model_embedder", "open_session"]
