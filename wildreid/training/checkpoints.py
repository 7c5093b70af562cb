"""Resumable runs: the loop position saved beside accelerate's state, finding the checkpoint to resume
from, and stopping cleanly (with a checkpoint) on SIGTERM / SIGINT or at a time limit.

A checkpoint folder is not trusted to hold code. Our loop position is JSON (`wildreid_progress.json`),
never an accelerate "custom object": accelerate unpickles those with `weights_only=False`, which runs
whatever a planted `custom_checkpoint_N.pkl` says. Everything else accelerate reads back is safetensors
or `torch.load(weights_only=True)`. A folder holding such a pickle is refused before anything is loaded.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PROGRESS_FILE = "wildreid_progress.json"
# Written into an output folder when a run starts: marks the folder as a training run's (train.py reuses no
# other non-empty folder) and names the run, so a run prunes and resumes only its own checkpoints.
RUN_FILE = "wildreid_run.json"
UNPICKLED_BY_ACCELERATE = re.compile(r"^custom_checkpoint_\d+\.pkl$")


@dataclass
class TrainingProgress:
    """Loop position and best score, saved in every checkpoint next to model, optimiser and RNG states."""

    step: int = 0
    best_map: float = -1.0
    best_step: int = -1
    run_id: str = ""  # the run that wrote the checkpoint (RUN_FILE); empty in checkpoints older than run ids

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
        kinds = {"step": int, "best_map": (int, float), "best_step": int, "run_id": str}
        names = [item.name for item in fields(cls)]
        if isinstance(state, dict):
            state.setdefault("run_id", "")
        if not isinstance(state, dict) or sorted(state) != sorted(names) or not all(
                isinstance(state[name], kinds[name]) and not isinstance(state[name], bool) for name in names):
            raise ValueError(f"{path}: expected {{step, best_map, best_step}} numbers and an optional run_id text, "
                             f"got {state!r}")
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
    current = current_run_id(output_dir)
    candidates = [(step, path) for step, path in run_checkpoints(output_dir)
                  if current is None or _run_of(path) == current]
    if not candidates:
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir / 'checkpoints'}")
    return candidates[-1][1]


def run_checkpoints(output_dir: Path, run_id: str | None = None) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints under `output_dir/checkpoints`, by step; only those the run
    `run_id` wrote when given: a run never prunes or resumes a checkpoint that another run (or tool) left."""
    found = sorted((int(m.group(1)), p) for p in (output_dir / "checkpoints").glob("checkpoint-*")
                   if (m := CHECKPOINT_PATTERN.match(p.name)) and (p / PROGRESS_FILE).is_file())
    return [(step, path) for step, path in found if run_id is None or _run_of(path) == run_id]


def prune_checkpoints(output_dir: Path, run_id: str, keep: int) -> None:
    """Delete the oldest of the run's own checkpoints beyond `keep`; another run's or tool's are never touched."""
    kept = run_checkpoints(output_dir, run_id)
    for _, old in kept[: max(0, len(kept) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _run_of(checkpoint: Path) -> str | None:
    try:
        return TrainingProgress.load(checkpoint).run_id
    except ValueError:
        return None


def current_run_id(output_dir: Path) -> str | None:
    """The id of the run that last started in `output_dir` (RUN_FILE), or None (no run file: a folder
    written before run ids existed)."""
    try:
        run_id = json.loads((output_dir / RUN_FILE).read_text()).get("run_id")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and run_id else None


def start_run(output_dir: Path, resume: bool) -> str:
    """Mark `output_dir` as this run's and return the run id: a resumed run keeps the folder's id, a new run
    (also one told to --overwrite_output_dir an earlier run's folder) gets a fresh one."""
    run_id = current_run_id(output_dir) if resume else None
    if run_id is None:
        run_id = uuid.uuid4().hex
        output_dir.mkdir(parents=True, exist_ok=True)
        partial = output_dir / (RUN_FILE + ".partial")
        partial.write_text(json.dumps({"run_id": run_id}))
        partial.replace(output_dir / RUN_FILE)
    return run_id


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


class TimeLimit:
    """`max_train_minutes`: whether a run's time is up. The main process's clock decides for every process, so
    distributed replicas stop at the same step (one that stopped alone would leave the others waiting)."""

    def __init__(self, minutes: float | None, accelerator):
        self.deadline = None if minutes is None else time.monotonic() + 60 * minutes
        self.accelerator = accelerator

    def reached(self) -> bool:
        if self.deadline is None:
            return False
        late = time.monotonic() >= self.deadline
        if self.accelerator.num_processes > 1:
            import torch
            from accelerate.utils import broadcast

            late = bool(broadcast(torch.tensor([int(late)], device=self.accelerator.device)).item())
        return late


def contiguous_weights(models, weights: list[dict], output_dir: str) -> None:
    """save_state pre-hook: safetensors needs contiguous tensors, channels_last weights are not."""
    for state in weights:
        for key, value in state.items():
            state[key] = value.contiguous()
