"""Process-pool plumbing shared by feature extraction and matching: one process per core, each with
single-threaded OpenCV and BLAS.

Work is spread over `num_workers` processes started with forkserver, so scripts that use more than
one worker need the usual `if __name__ == "__main__":` guard.
"""
from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

import cv2
from tqdm.auto import tqdm

from .. import threads

WORKER_STATE: dict[str, Any] = {}


def process_context():
    """Forkserver, not fork: a forked child inherits OpenCV's and OpenBLAS's thread-pool locks in
    whatever state the parent's threads held them and can deadlock on first use."""
    return multiprocessing.get_context("forkserver")


def limit_threads() -> None:
    """One process per core: stop OpenCV and BLAS from spawning their own thread pools on top."""
    cv2.setNumThreads(1)
    from threadpoolctl import threadpool_limits

    WORKER_STATE["thread_limits"] = threadpool_limits(1)


def worker_pool(max_workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """The process pool of every parallel step: forkserver workers, single-threaded (`limit_threads`), that
    end when the command that started them ends, also on kill -9 (`die_with`); then `initializer(*initargs)`."""
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=process_context(), initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))


def _start_worker(command_pid: int, initializer: Callable | None, initargs: tuple) -> None:
    die_with(command_pid)
    limit_threads()
    if initializer is not None:
        initializer(*initargs)


def die_with(command_pid: int) -> None:
    """End this worker when the process `command_pid` ends. Watching the command itself, not the parent: a
    forkserver worker's parent is the forkserver, which stays up while any worker lives (each holds its
    liveness pipe), so a worker waiting for its parent would wait for ever. A daemon thread blocks on a pidfd
    (Linux), else polls every second, and exits the process hard: no clean-up, the command is gone.
    SIGTERM gets its default action back (a worker must not inherit a handler that only sets a flag)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def watch() -> None:
        try:
            descriptor = os.pidfd_open(command_pid)
        except (AttributeError, OSError):  # no pidfd (not Linux), or the command is already gone
            while _alive(command_pid):
                time.sleep(1.0)
        else:
            select.select([descriptor], [], [])  # readable once the process has ended
        os._exit(1)

    threading.Thread(target=watch, name="die-with-command", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_count(num_workers: int | None, num_tasks: int) -> int:
    """None: every available core; 0 or 1: in this process (as torch's DataLoader reads num_workers=0).
    Never more processes than cores: each is single-threaded and CPU-bound."""
    return min(max(1, threads.worker_count(num_workers)), max(1, num_tasks))


def parallel_map(function, tasks: list, *, num_workers: int | None, progress: bool, description: str) -> list:
    workers = worker_count(num_workers, len(tasks))
    bar = tqdm(total=len(tasks), desc=description, unit="image", disable=not progress)
    results = []
    if workers <= 1:
        for task in tasks:
            results.append(function(task))
            bar.update()
    else:
        with worker_pool(workers) as pool:
            for result in pool.map(function, tasks, chunksize=max(1, min(32, len(tasks) // (workers * 8)))):
                results.append(result)
                bar.update()
    bar.close()
    return results
