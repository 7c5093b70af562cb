"""Publishing a training output folder on the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from ..embedding.shipped_model import publish_model_folder


def push_output_to_hub(output_dir: Path, repo_id: str, private: bool = False) -> str:
    """Upload the output folder (embedder, processor, config, metrics, card) without the checkpoints and logs:
    the same upload as `wildreid publish-model`."""
    return publish_model_folder(output_dir, repo_id, private=private)
