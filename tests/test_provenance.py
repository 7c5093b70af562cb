"""Results JSON name the code that produced them."""
import subprocess
from pathlib import Path

from wildreid.provenance import code_version


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def test_commit_and_dirty_flag_follow_the_checkout(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    assert code_version(tmp_path) == {"git_commit": _git(tmp_path, "rev-parse", "HEAD"), "git_dirty": False}
    (tmp_path / "notes.txt").write_text("untracked files do not change the code\n")
    assert code_version(tmp_path)["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert code_version(tmp_path)["git_dirty"] is True


def test_ignored_folders_do_not_make_the_code_dirty(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "results").mkdir()
    for path in ("code.py", "results/r.json"):
        (tmp_path / path).write_text("1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    (tmp_path / "results" / "r.json").write_text("2\n")  # a benchmark's own output, written before its report
    assert code_version(tmp_path)["git_dirty"] is True
    assert code_version(tmp_path, ignore=["results"])["git_dirty"] is False
    (tmp_path / "code.py").write_text("2\n")
    assert code_version(tmp_path, ignore=["results"])["git_dirty"] is True


def test_outside_a_checkout_both_are_unknown(tmp_path):
    assert code_version(tmp_path) == {"git_commit": None, "git_dirty": None}
