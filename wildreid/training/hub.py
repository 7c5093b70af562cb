"""Publishing a training output folder on the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path


def push_output_to_hub(output_dir: Path, repo_id: str, private: bool = False) -> str:
    """Upload the output folder (embedder, processor, config, metrics, card) without the checkpoints."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(output_dir),
                               ignore_patterns=["checkpoints/*", "logs/*", "*/events.out.*"],
                               commit_message="Upload wildreid model")
    return commit.commit_url if hasattr(commit, "commit_url") else str(commit)
