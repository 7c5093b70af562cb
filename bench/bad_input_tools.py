"""What the hostile-input cases of `bench/bad_inputs.py` share: running a command line in a subprocess, judging
a refusal, generating images and tiny models, and a real kill -9 at a chosen library call."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from hub_datasets_testing import write_png_bomb  # noqa: E402,F401  (the tests' bomb generator)

TINY_TRAINING = ["--backbone", "tf_efficientnet_lite0", "--backbone_pretrained", "false", "--image_size", "64",
                 "--identities_per_batch", "2", "--images_per_identity", "2", "--num_workers", "0",
                 "--warmup_steps", "1", "--neck_calibration_images", "8", "--log_with", "none"]


@dataclass
class Outcome:
    handled: bool
    text: str


def run(args: list[str], *, cwd: Path = REPO, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def refused(done: subprocess.CompletedProcess, *needles: str) -> Outcome:
    """Handled when the command failed with a message holding every needle and no traceback."""
    message = next((line for line in done.stderr.splitlines() if line.startswith("error:")),
                   (done.stderr.strip().splitlines() or ["(no message)"])[-1])
    ok = done.returncode != 0 and "Traceback" not in done.stderr and all(n in done.stderr for n in needles)
    return Outcome(ok, f"exit {done.returncode}: {message[:150]}")


def cli(*args: str) -> list[str]:
    return ["-m", "wildreid.identification.cli", *args]


def write_images(root: Path, identities: int = 3, per_identity: int = 3, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    for i in range(identities):
        (root / f"ind{i}").mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"ind{i}" / f"{j}.png")
    return root


def save_model(folder: Path, seed: int) -> Path:
    script = ("import sys, torch; from modeling_wildreid import WildReIDConfig, WildReIDModel; "
              f"torch.manual_seed({seed}); WildReIDModel(WildReIDConfig(backbone='tf_efficientnet_lite0', "
              "image_size=64)).save_pretrained(sys.argv[1])")
    done = run(["-c", script, str(folder)])
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


# Runs a CLI's main() with one library call replaced by SIGKILL of the process itself: a real kill -9 at
# that moment (no cleanup, no atexit). argv[1] = "module:attribute" to replace, argv[2] = after how many calls.
KILL_AT = """
import importlib, os, runpy, signal, sys
target, after = sys.argv[1], int(sys.argv[2])
module_name, attribute = target.rsplit(":", 1)
owner_path, _, attribute = attribute.rpartition(".")
owner = importlib.import_module(module_name)
for part in filter(None, owner_path.split(".")):
    owner = getattr(owner, part)
original, calls = getattr(owner, attribute), []
def killer(*args, **kwargs):
    calls.append(1)
    if len(calls) > after:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(owner, attribute, killer)
sys.argv = sys.argv[3:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""
