"""Worker processes that end with the command that started them, also when it is killed with SIGKILL.

A forkserver worker's parent is the forkserver, which stays up while any worker lives (each worker holds
its liveness pipe), and a worker imports the command's main module (torch, OpenCV: seconds) before any code
of ours runs in it. So on Linux the forkserver itself is guarded: `guard_forkserver` (the forkserver preloads
this module, see `start_forkserver`) asks the kernel for SIGTERM when the command dies (PR_SET_PDEATHSIG), then
SIGKILLs every worker it forked, even one still importing, and exits. Where that is not available, `die_with`,
run first by each worker, watches the command's pid. This module imports nothing of wildreid.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
import time

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
        if not entry.isdigit():
            continue
        try:  # /proc/<pid>/stat: "pid (name) state ppid ..."; the name may hold spaces and parentheses
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            if parent == me:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
    os._exit(1)


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
        pass
    return True


guard_forkserver()  # acts only in a command's forkserver (see the module docstring)
