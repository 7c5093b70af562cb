"""Worker processes that end with the command that started them, also when it is killed with SIGKILL.

A forkserver worker's parent is the forkserver, which stays up while any worker lives (each worker holds
its liveness pipe), so a worker cannot wait for its parent: it watches the command's pid instead. The watch
must start before the worker imports anything heavy (unpickling a task function imports torch, OpenCV,
scikit-learn: many seconds on a busy machine), so this module imports nothing of wildreid and the pool's real
initializer travels pickled, to be loaded only once the watch runs.

Before even that, a forkserver worker imports the command's main module (seconds more). So on Linux the
forkserver itself is guarded: `guard_forkserver` (it preloads this module, see `start_forkserver`) asks the
kernel for SIGTERM when the command dies (PR_SET_PDEATHSIG) and then SIGKILLs every worker it forked, even
one still importing, and exits.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import sys
import threading
import time
from typing import Callable

GUARD_ENV = "WILDREID_POOL_COMMAND_PID"  # the command's pid, in its forkserver's environment only
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def start_forkserver(context) -> None:
    """Start the forkserver of `context` (a forkserver context) if it is not running, preloading the command's
    main module (as multiprocessing does by default) and this module, which guards it (`guard_forkserver`).
    GUARD_ENV names the command in the forkserver's environment only: it is unset again here."""
    import multiprocessing.forkserver

    context.set_forkserver_preload(["__main__", __name__])
    previous = os.environ.get(GUARD_ENV)
    os.environ[GUARD_ENV] = str(os.getpid())
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if previous is None:
            os.environ.pop(GUARD_ENV, None)
        else:
            os.environ[GUARD_ENV] = previous


def guard_forkserver() -> None:
    """In the forkserver (a direct child of the command that set GUARD_ENV): end every worker when the
    command ends. Linux only; elsewhere `die_with` alone ends the workers once they have started."""
    command = os.environ.get(GUARD_ENV)
    if not sys.platform.startswith("linux") or command != str(os.getppid()):
        return
    signal.signal(signal.SIGTERM, _end_workers)
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0 \
            and str(os.getppid()) != command:  # the command ended before the request took effect
        _end_workers(signal.SIGTERM, None)


def _end_workers(signum, frame) -> None:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        try:
            parent = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) if entry.isdigit() else 0
        except (OSError, IndexError, ValueError):
            continue
        if parent == me:
            os.kill(int(entry), signal.SIGKILL)
    os._exit(1)


def initializer_args(initializer: Callable, initargs: tuple = ()) -> tuple[int, bytes]:
    """`initargs` for a process pool whose `initializer` is `start`: this process's pid and the real
    initializer, pickled here (by reference: functions are never pickled by value)."""
    return os.getpid(), pickle.dumps((initializer, initargs))


def start(command_pid: int, payload: bytes) -> None:
    """Process-pool initializer: watch `command_pid`, then load and run the real initializer."""
    die_with(command_pid)
    initializer, initargs = pickle.loads(payload)  # our own bytes, made by initializer_args in the command
    initializer(*initargs)


def die_with(command_pid: int) -> None:
    """End this process as soon as `command_pid` ends: a daemon thread blocks on a pidfd (Linux), else polls
    every second, then exits hard (no clean-up: the command is gone). SIGTERM gets its default action back,
    so `kill` works on a worker that inherited a handler which only sets a flag."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def watch() -> None:
        try:
            descriptor = os.pidfd_open(command_pid)
        except (AttributeError, OSError):  # no pidfd here, or the command already ended
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
    except PermissionError:  # exists, owned by someone else
        return True
    return True


guard_forkserver()  # acts only in a command's forkserver (see the module docstring)
