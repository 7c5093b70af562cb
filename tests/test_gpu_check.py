"""bench/gpu_check.py's plumbing, on a CPU with a tiny backbone (`--dry-run`): every part runs and lands in one JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_part(tmp_path):
    output = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--output", str(output)], cwd=REPO,
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu" and len(report["git_commit"] or "") == 40
    parts = report["parts"]
    assert parts["train"]["steps"] == 2 and parts["train"]["images_per_second"] > 0
    assert parts["train"]["resolved"]["mixed_precision"] == "bf16"  # configs/gpu.yaml's recipe, tiny backbone
    assert parts["train"]["resolved"]["channels_last"] == "true"
    assert "skipped" in parts["train_compile"]
    assert parts["train_throughput"]["step_ratio_to_bare"] > 0 and parts["train_throughput"]["recipe"] == "gpu"
    assert parts["inference"]["images"] == report["photos"]["images"] and parts["inference"]["images_per_second"] > 0
