"""Which code produced a results file: the git commit of the checkout wildreid runs from, and whether it
had uncommitted changes (numbers from a dirty tree cannot be reproduced from the commit alone)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Sequence

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def code_version(root: str | os.PathLike = SOURCE_ROOT, ignore: Sequence[str] = ()) -> dict[str, str | bool | None]:
    """{"git_commit": full hash, "git_dirty": tracked files changed}; both None outside a git checkout
    (e.g. an installed wheel) or without git. `ignore`: folders (relative to `root`) whose changes do not count,
    e.g. the results files a benchmark itself wrote before its report."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                         *(f":(exclude){folder}" for folder in ignore)))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}
