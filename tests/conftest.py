"""Shared pytest fixtures. Tests make their own images; real data is optional and read from
$WILDREID_DATA (default ../shared/data next to the repository)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`make test` runs `-n auto`), the workers share the cores: each worker's torch, and the
# commands its tests start, get their share instead of every worker taking all of them. A value the user set wins.
# (wildreid.threads imports only `os`: no HF library loads before the Hub stand-in below sets its variables.)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from wildreid.threads import NUM_THREADS_ENV, available_cores

    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault(NUM_THREADS_ENV, str(max(1, available_cores() // _workers)))

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


def pytest_collection_modifyitems(config, items):
    """Files holding a test marked slow run first (a stable sort keeps the rest in order): under `make test`'s
    `-n auto --dist loadfile`, a long file handed out last would keep one worker busy while the others idle."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
