"""Process-pool plumbing shared by feature extraction and matching: one process per core, each with
single-threaded OpenCV and BLAS.

Work is spread over `num_workers` processes started with forkserver, so scripts that use more than
one worker need the usual `if __name__ == "__main__":` guard.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

import cv2
from tqdm.auto import tqdm

from .. import threads, worker_processes

WORKER_STATE: dict[str, Any] = {}


def process_context():
    """Forkserver, not fork: a forked child inherits OpenCV's and OpenBLAS's thread-pool locks in
    whatever state the parent's threads held them and can deadlock on first use."""
    context = multiprocessing.get_context("forkserver")
    worker_processes.start_forkserver(context)  # guarded: its workers end with this command
    return context


def limit_threads() -> None:
    """One process per core: stop OpenCV and BLAS from spawning their own thread pools on top."""
    cv2.setNumThreads(1)
    from threadpoolctl import threadpool_limits

    WORKER_STATE["thread_limits"] = threadpool_limits(1)


def worker_pool(max_workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """The process pool of every parallel step: forkserver workers that end when the command that started them
    ends, also on kill -9 (`wildreid.worker_processes`), single-threaded (`limit_threads`), then
    `initializer(*initargs)`."""
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=process_context(), initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))


def _start_worker(command_pid: int, initializer: Callable | None, initargs: tuple) -> None:
    worker_processes.die_with(command_pid)
    limit_threads()
    if initializer is not None:
        initializer(*initargs)


# A pool worker starts a Python that imports torch, OpenCV and the command's modules before its first task:
# 64 crops of 256 px took 11.5 s of SIFT in this process and 22 s with 2 workers, ~13 s of it start-up (2 cores,
# another job running). So by default a worker is started per MIN_TASKS_PER_WORKER tasks, small jobs run here.
MIN_TASKS_PER_WORKER = 128


def worker_count(num_workers: int | None, num_tasks: int) -> int:
    """None: the available cores, but at most one per MIN_TASKS_PER_WORKER tasks (a small job is done sooner
    in this process than a pool starts); 0 or 1: in this process (as torch's DataLoader reads num_workers=0); an
    explicit count is honoured. Never more processes than cores: each is single-threaded and CPU-bound."""
    cap = max(1, -(-num_tasks // MIN_TASKS_PER_WORKER)) if num_workers is None else max(1, num_tasks)
    return min(max(1, threads.worker_count(num_workers)), cap)


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
