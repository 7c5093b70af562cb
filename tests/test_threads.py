"""Thread settings: the OpenMP wait policy is set before torch loads, thread/worker counts follow the
CPU affinity and the overrides, bad overrides fail clearly."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wildreid import threads

REPO = Path(__file__).resolve().parents[1]

# Records OMP_WAIT_POLICY at the moment torch is first imported, then imports the entry point.
PROBE = """
import importlib.abc, os, runpy, sys
seen = []
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Probe())
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__") if sys.argv[0].endswith(".py") else runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print("POLICY_AT_TORCH_IMPORT", seen)
"""


@pytest.mark.parametrize("entry_point", ["train.py", "evaluate.py", "wildreid.identification.cli"])
def test_entry_points_set_a_passive_wait_policy_before_torch_loads(entry_point):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", PROBE, entry_point], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert "POLICY_AT_TORCH_IMPORT ['PASSIVE']" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]


def test_a_wait_policy_chosen_by_the_user_is_kept():
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}
    out = subprocess.run([sys.executable, "-c", "import os, wildreid.threads; print(os.environ['OMP_WAIT_POLICY'])"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ACTIVE"


def test_thread_count_follows_affinity_world_size_and_override(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv(threads.NUM_THREADS_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.available_cores() == 4 and threads.default_num_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two accelerate processes share the cores
    assert threads.default_num_threads() == 2
    monkeypatch.setenv(threads.NUM_THREADS_ENV, "3")
    assert threads.default_num_threads() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv(threads.NUM_THREADS_ENV, bad)
        with pytest.raises(ValueError, match=r"\$WILDREID_NUM_THREADS must be a positive integer"):
            threads.default_num_threads()


def test_worker_pools_never_exceed_the_available_cores(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [threads.worker_count(n) for n in (None, 0, 1, 2, 16)] == [2, 0, 1, 2, 2]
    with pytest.raises(ValueError, match=">= 0"):
        threads.worker_count(-1)


def test_configure_threads_sets_torch_and_refuses_nonsense():
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="--num_threads must be a positive integer"):
            threads.configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_cli_reports_a_bad_thread_count(capsys):
    from wildreid.identification.cli import main

    before = torch.get_num_threads()
    assert main(["identify", "--gallery", "nowhere", "--images", "a.jpg", "--num_threads", "0"]) == 2
    assert "--num_threads must be a positive integer" in capsys.readouterr().err
    assert torch.get_num_threads() == before
