"""What every benchmark script needs before its first measurement."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def limit_threads() -> None:
    """One compute thread that yields its core when idle (OMP_WAIT_POLICY=PASSIVE): on a shared 2-core machine
    spinning OpenMP threads made steps 35-50x slower. Must run before torch / faiss load; env overrides win."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def git_state() -> dict:
    """The commit that produced a result, and whether the tree had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}
