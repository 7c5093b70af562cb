"""How the review app is served: who may reach it, and where its uploads live.

- `exposure_warning`: the loud warning printed when the app binds beyond loopback (anyone who can reach the
  port can see the gallery's photos and change the gallery).
- `resolve_auth`: the optional login (`--auth user:password`, or the `WILDREID_APP_AUTH` environment variable
  so the password need not sit in shell history), checked before anything is loaded; Gradio's `auth=`.
- `UploadFolder`: a temporary folder of this app's own that Gradio keeps uploads and the pictures it serves
  in (`GRADIO_TEMP_DIR` while the app runs), removed when the app exits, also on SIGTERM, SIGHUP or Ctrl-C.
  Query photos are read into memory when candidates are asked for; a decision keeps its own copy in the
  review folder, so nothing there is needed once the app has stopped. (A process killed with SIGKILL cannot
  clean up: its folder, `wildreid-app-*` in the temp folder, is left to the system's temp cleaner.)
"""
from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

AUTH_ENV = "WILDREID_APP_AUTH"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    """True when `host` is this machine only (127.0.0.0/8, ::1, localhost); 0.0.0.0, ::, a LAN address or any
    other host name is not (a name may resolve to any interface)."""
    host = host.strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int, auth: tuple[str, str] | None) -> str | None:
    """The warning to print when the app listens beyond loopback (None on loopback)."""
    if is_loopback(host):
        return None
    where = f"all network interfaces ({host or '0.0.0.0'})" if host.strip("[] ") in ("0.0.0.0", "::", "") else host
    lines = [f"WARNING: the review app listens on {where}, port {port}: other machines can reach it, not only "
             "this one.",
             "Anyone who can reach that port can see the gallery's photos and change the gallery (add individuals, "
             "undo decisions)."]
    if auth is None:
        lines.append(f"No login is required: pass --auth user:password (or set {AUTH_ENV}=user:password) to require "
                     "one, or bind to 127.0.0.1 and reach the app through an SSH tunnel.")
    else:
        lines.append("A login is required, but plain HTTP carries the password and the photos unencrypted: serve the "
                     "app behind an HTTPS proxy or on a network you trust.")
    bar = "!" * 100
    return "\n".join([bar, *lines, bar])


def parse_auth(value: str, source: str = "--auth") -> tuple[str, str]:
    """(user, password) from "user:password" (split at the first colon; the password may hold colons; the
    user name is stripped, as Gradio's login form strips it). The error never repeats the value: it holds a
    password."""
    user, colon, password = value.partition(":")
    if not colon:
        problem = "it is empty" if not value else "it has no ':'"
    elif not user.strip():
        problem = "the user name is empty"
    elif not password:
        problem = "the password is empty"
    else:
        return user.strip(), password
    raise ValueError(f"{source} must be user:password, a non-empty user name and password separated by ':'; "
                     f"{problem}")


def resolve_auth(flag: str | None, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """The login the app requires: `--auth` when given, else `WILDREID_APP_AUTH` when set (set but malformed,
    empty included, is refused rather than ignored: a login someone meant to require must not silently
    vanish), else None."""
    environ = os.environ if environ is None else environ
    if flag is not None:
        return parse_auth(flag, "--auth")
    if AUTH_ENV in environ:
        return parse_auth(environ[AUTH_ENV], AUTH_ENV)
    return None


class UploadFolder:
    """A fresh `wildreid-app-*` folder (inside $GRADIO_TEMP_DIR when that is set, else the system temp
    folder), made Gradio's upload and cache folder by setting GRADIO_TEMP_DIR until `close()`, which removes
    it with everything in it and restores GRADIO_TEMP_DIR. Also closed at interpreter exit. Create it before
    building the Blocks: Gradio components note the folder when they are made."""

    def __init__(self):
        self._previous = os.environ.get("GRADIO_TEMP_DIR")
        if self._previous:  # Gradio makes its folder when missing; so must we, to make ours inside it
            Path(self._previous).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="wildreid-app-", dir=self._previous or None))
        os.environ["GRADIO_TEMP_DIR"] = str(self.path)
        self._closed = False
        atexit.register(self.close)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        shutil.rmtree(self.path, ignore_errors=True)
        if os.environ.get("GRADIO_TEMP_DIR") == str(self.path):
            if self._previous is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = self._previous
        atexit.unregister(self.close)


@contextmanager
def stop_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread while the block runs, as Ctrl-C does:
    Gradio then closes its server and the code after the blocking launch (clean-up) runs; by default those
    signals end the process without either."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) in (signal.SIG_DFL, None):
            previous[number] = signal.signal(number, interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
