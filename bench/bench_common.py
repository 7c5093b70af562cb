"""What a benchmark script sets before torch or faiss load."""
from __future__ import annotations

import os


def limit_threads() -> None:
    """One compute thread that yields its core when idle (OMP_WAIT_POLICY=PASSIVE): on a shared 2-core machine
    spinning OpenMP threads made steps 35-50x slower. Must run before torch / faiss load; env overrides win."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
