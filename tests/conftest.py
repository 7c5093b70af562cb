"""Shared pytest fixtures. Tests make their own images; real data is optional and read from
$WILDREID_DATA (default ../shared/data next to the repository)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Session-wide local Hub stand-in; sets HF_ENDPOINT & co. before any test imports an HF library.
pytest_plugins = ["hub_stub"]


def real_data_dir() -> Path:
    return Path(os.environ.get("WILDREID_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real species folders (lion, nyala, dog, pig); skips the test when absent."""
    root = real_data_dir()
    if not (root / "lion" / "annotations.csv").is_file():
        pytest.skip(f"real data not found at {root} (set WILDREID_DATA to the folder holding lion/, nyala/, dog/, pig/)")
    return root
