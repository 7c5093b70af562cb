"""Resumable runs: the loop position saved beside accelerate's state, finding the checkpoint to resume
from, and stopping cleanly (with a checkpoint) on SIGTERM / SIGINT.

A checkpoint folder is not trusted to hold code. Our loop position is JSON (`wildreid_progress.json`),
never an accelerate "custom object": accelerate unpickles those with `weights_only=False`, which runs
whatever a planted `custom_checkpoint_N.pkl` says. Everything else accelerate reads back is safetensors
or `torch.load(weights_only=True)`. A folder holding such a pickle is refused before anything is loaded.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
from dataclasses import asdict, dataclass, fields
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PROGRESS_FILE = "wildreid_progress.json"
UNPICKLED_BY_ACCELERATE = re.compile(r"^custom_checkpoint_\d+\.pkl$")


@dataclass
class TrainingProgress:
    """Loop position and best score, saved in every checkpoint next to model, optimiser and RNG states."""

    step: int = 0
    best_map: float = -1.0
    best_step: int = -1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def save(self, checkpoint: Path) -> None:
        (checkpoint / PROGRESS_FILE).write_text(json.dumps(self.state_dict()))

    @classmethod
    def load(cls, checkpoint: Path) -> "TrainingProgress":
        """Read `wildreid_progress.json`, checking every field's type (it is user-editable text)."""
        path = checkpoint / PROGRESS_FILE
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable training progress file ({error})") from None
        kinds = {"step": int, "best_map": (int, float), "best_step": int}
        names = [item.name for item in fields(cls)]
        if not isinstance(state, dict) or sorted(state) != sorted(names) or not all(
                isinstance(state[name], kinds[name]) and not isinstance(state[name], bool) for name in names):
            raise ValueError(f"{path}: expected {{{', '.join(names)}}} numbers, got {state!r}")
        if state["step"] < 0:
            raise ValueError(f"{path}: step must be >= 0, got {state['step']}")
        return cls(**state)


def refuse_pickled_objects(checkpoint: Path) -> None:
    """Refuse a checkpoint holding files accelerate would unpickle without restriction (see module docstring)."""
    pickles = sorted(p.name for p in checkpoint.iterdir() if UNPICKLED_BY_ACCELERATE.match(p.name))
    if pickles:
        raise ValueError(
            f"{checkpoint} holds {', '.join(pickles)}: accelerate would unpickle it with weights_only=False, which can "
            f"run arbitrary code, so it is not loaded. wildreid keeps its progress in {PROGRESS_FILE}; delete the "
            "file if you wrote it yourself and trust it")


def find_checkpoint(output_dir: Path, requested: str) -> Path:
    if requested != "latest":
        path = Path(requested)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if not (path / PROGRESS_FILE).is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {PROGRESS_FILE}: not a complete wildreid checkpoint")
        return path
    candidates = sorted(
        (int(m.group(1)), p) for p in (output_dir / "checkpoints").glob("checkpoint-*")
        if (m := CHECKPOINT_PATTERN.match(p.name)) and (p / PROGRESS_FILE).is_file()
    )
    if not candidates:
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir / 'checkpoints'}")
    return candidates[-1][1]


def latest_checkpoint_or_none(output_dir: Path) -> Path | None:
    try:
        return find_checkpoint(output_dir, "latest")
    except FileNotFoundError:
        return None


class StopSignal:
    """Remembers SIGTERM/SIGINT so the loop can checkpoint before exiting (preemption, Ctrl-C)."""

    def __init__(self):
        self.received = 0
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.received = signum


def contiguous_weights(models, weights: list[dict], output_dir: str) -> None:
    """save_state pre-hook: safetensors needs contiguous tensors, channels_last weights are not."""
    for state in weights:
        for key, value in state.items():
            state[key] = value.contiguous()
