"""CPU threading that survives a busy machine. Import this module before torch.

Importing it sets OpenMP's wait policy to PASSIVE unless the user chose one: torch's OpenMP threads then
sleep at barriers instead of spinning. Spinning threads on a machine where anything else runs turn each
barrier into a wait for a thread the OS has parked behind the other program: training steps became ~10x
slower on a shared 2-core machine (`bench/contention.py` measures it; docs/guides/speed.md). libgomp reads the variable once, when torch loads it, so
`wildreid/__init__.py` imports this module before anything else: every entry point gets it.

`configure_threads()` then sets torch's intra-op threads from the cores this process may run on
(`os.sched_getaffinity`, so `taskset`, cgroups cpusets and Slurm allocations are honoured), overridable
with `--num_threads` or `$WILDREID_NUM_THREADS`. `worker_count()` caps data-loader and SIFT pools at
that many processes.
"""
from __future__ import annotations

import os

NUM_THREADS_ENV = "WILDREID_NUM_THREADS"

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask), not the machine's total."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_num_threads() -> int:
    """`$WILDREID_NUM_THREADS` when set, else the available cores shared among the processes that
    `accelerate launch` started on this machine."""
    value = os.environ.get(NUM_THREADS_ENV)
    if value is None or value == "":
        return max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"${NUM_THREADS_ENV} must be a positive integer, got {value!r}") from None
    if threads < 1:
        raise ValueError(f"${NUM_THREADS_ENV} must be a positive integer, got {value!r}")
    return threads


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count (default: `default_num_threads()`); returns it."""
    import torch

    threads = default_num_threads() if num_threads is None else num_threads
    if threads < 1:
        raise ValueError(f"--num_threads must be a positive integer, got {threads}")
    torch.set_num_threads(threads)
    return threads


def worker_count(requested: int | None) -> int:
    """Processes for a data-loader or matching pool: the request, capped at the available cores
    (None: all of them). 0 stays 0 (work in this process)."""
    cores = available_cores()
    if requested is None:
        return cores
    if requested < 0:
        raise ValueError(f"worker count must be >= 0, got {requested}")
    return min(requested, cores)
