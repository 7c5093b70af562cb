"""bench/bench_common.write_report names the code that measured: the commit checked out when the script started."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_common  # noqa: E402


def report_with(monkeypatch, tmp_path, start: dict, end: dict) -> dict:
    monkeypatch.setattr(bench_common, "CODE_AT_START", start)
    monkeypatch.setattr(bench_common, "code_version", lambda ignore=(): end)
    bench_common.write_report(tmp_path / "r.json", "demo", {"value": 1})
    return json.loads((tmp_path / "r.json").read_text())


def test_the_report_names_the_commit_of_the_start_and_a_change_made_while_it_ran(monkeypatch, tmp_path):
    clean = report_with(monkeypatch, tmp_path, {"git_commit": "a", "git_dirty": False},
                        {"git_commit": "a", "git_dirty": False})
    assert (clean["git_commit"], clean["git_dirty"], clean["value"]) == ("a", False, 1)
    assert "git_commit_at_end" not in clean
    moved = report_with(monkeypatch, tmp_path, {"git_commit": "a", "git_dirty": False},
                        {"git_commit": "b", "git_dirty": False})
    assert (moved["git_commit"], moved["git_commit_at_end"], moved["git_dirty"]) == ("a", "b", False)
    edited_while_running = report_with(monkeypatch, tmp_path, {"git_commit": "a", "git_dirty": False},
                                       {"git_commit": "a", "git_dirty": True})
    assert edited_while_running["git_dirty"] is True
    dirty_from_the_start = report_with(monkeypatch, tmp_path, {"git_commit": "a", "git_dirty": True},
                                       {"git_commit": "a", "git_dirty": False})
    assert dirty_from_the_start["git_dirty"] is True


def test_the_start_is_this_checkout():
    from wildreid.provenance import code_version

    assert bench_common.CODE_AT_START["git_commit"] == code_version()["git_commit"]
