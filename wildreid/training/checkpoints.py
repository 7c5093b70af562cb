"""Resumable runs: the loop position saved beside accelerate's state, finding the checkpoint to resume
from, and stopping cleanly (with a checkpoint) on SIGTERM / SIGINT."""

from __future__ import annotations

import contextlib
import re
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


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


def find_checkpoint(output_dir: Path, requested: str) -> Path:
    if requested != "latest":
        path = Path(requested)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    candidates = sorted(
        (int(m.group(1)), p) for p in (output_dir / "checkpoints").glob("checkpoint-*")
        if (m := CHECKPOINT_PATTERN.match(p.name)) and (p / "wildreid_progress.json").is_file()
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
