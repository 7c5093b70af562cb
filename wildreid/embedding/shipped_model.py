"""The model wildreid ships: what `wildreid index`, `app` and `evaluate.py` embed with when `--model` is omitted.

It is the flagship CPU recipe (`configs/cpu_real.yaml`: EfficientNet-Lite0, lion + nyala + dog + pig) at the
point -- checkpoint step and share of its fine-tuning -- that transferred best to species never trained on
(`make shipped-run`, `experiments/transfer_mix.py --checkpoints`), stored as a
float16 model folder inside the package (`wildreid/default_model/`, <= 10 MB, so it installs with wildreid and
works offline), with its processor, remote code and model card. `AutoModel.from_pretrained(SHIPPED_MODEL,
trust_remote_code=True)` loads it like any Hub model (weights cast back to float32). It is replaced only when the
recipe changes; git keeps every version. `make ship-model` rebuilds it from a training output
(`save_shipped_model`), `wildreid publish-model` pushes the same folder to the Hub (`publish_model_folder`).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from .embedders import load_wildreid_model

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "default_model"
SHIPPED_NAME = "wildreid default model (EfficientNet-Lite0; lion, nyala, dog, pig)"
MAX_SHIPPED_BYTES = 10 * 1024 * 1024
CARD_FILE = "README.md"
# What a training output holds beside the model that the shipped folder leaves out: its checkpoints, logs,
# evaluation outputs and run records (the card names the run and its figures instead).
LEFT_OUT = ["checkpoints/*", "logs/*", "eval/*", "*/events.out.*", "wildreid_run.json"]


def shipped_model() -> str:
    """The shipped model folder as a `--model` value; a clear error when the installation lacks it."""
    if not (SHIPPED_MODEL / "model.safetensors").is_file():
        raise FileNotFoundError(f"the shipped model is missing from this installation ({SHIPPED_MODEL}): reinstall "
                                "wildreid, or pass --model with a model folder or Hub id")
    return str(SHIPPED_MODEL)


def describe_default(model: str | None) -> str:
    """`model`, or the shipped model when it is None, as a line for the command's output."""
    return f"model: {model}" if model else f"model: {SHIPPED_NAME}, {SHIPPED_MODEL} (no --model given)"


def save_shipped_model(trained: str | Path, destination: str | Path, card: str | Path) -> Path:
    """Write the float16 copy of the trained model folder `trained` to `destination` (replaced whole, after
    the new folder is complete), with `card` as its model card; refuses a folder over `MAX_SHIPPED_BYTES`."""
    from transformers import AutoImageProcessor

    destination = Path(destination)
    model = load_wildreid_model(str(trained))
    # Stored float16, built float32: the config keeps the model's dtype, which from_pretrained builds it in (float16
    # convolutions are slow or missing on CPUs); the weights are cast when loaded.
    half = {name: tensor.to(torch.float16) if tensor.is_floating_point() else tensor
            for name, tensor in model.state_dict().items()}
    staging = Path(tempfile.mkdtemp(prefix=".shipping-", dir=destination.parent))
    try:
        model.save_pretrained(staging, state_dict={name: tensor.contiguous() for name, tensor in half.items()})
        AutoImageProcessor.from_pretrained(str(trained), trust_remote_code=True).save_pretrained(staging)
        shutil.copyfile(card, staging / CARD_FILE)
        size = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file())
        if size > MAX_SHIPPED_BYTES:
            raise ValueError(f"the shipped model would take {size / 2**20:.1f} MB, over the "
                             f"{MAX_SHIPPED_BYTES / 2**20:.0f} MB a repository copy may; ship a smaller backbone")
        for path in (staging, *staging.rglob("*")):  # mkdtemp's 0700 would hide an installed copy from other users
            path.chmod(0o755 if path.is_dir() else 0o644)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def publish_model_folder(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                         message: str = "Upload wildreid model") -> str:
    """Upload a model folder (the shipped one, or a training output without its checkpoints) to the Hub model
    repo `repo_id`, created when absent; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} is not a wildreid model folder (config.json and model.safetensors)")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), ignore_patterns=LEFT_OUT,
                               commit_message=message)
    return commit.commit_url if hasattr(commit, "commit_url") else str(commit)


def main(argv: list[str] | None = None) -> None:
    """`python -m wildreid.embedding.shipped_model outputs/cpu_real_transfer` (what `make ship-model` runs)."""
    import argparse

    parser = argparse.ArgumentParser(description="rebuild the shipped model folder from a training output")
    parser.add_argument("trained", help="model folder: the point transfer_mix.py chose (make shipped-run writes it)")
    parser.add_argument("--card", default="model_card.md", help="the model card, copied as the folder's README.md")
    parser.add_argument("--output", default=str(SHIPPED_MODEL))
    args = parser.parse_args(argv)
    folder = save_shipped_model(args.trained, args.output, args.card)
    print(f"{folder}: {(folder / 'model.safetensors').stat().st_size / 2**20:.1f} MB of float16 weights")


if __name__ == "__main__":
    main()
