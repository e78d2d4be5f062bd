"""Process helpers: find system binaries, start detached children, stop them without leftovers.

Every child is started in its own session, so its process-group id equals its pid. Stopping by
process group then also catches nginx workers, and the same code works from another process
(``prewarm testbed down``) that only knows the pids from the state file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_PACKAGES = {"nginx": "nginx-light (or nginx)", "dnsmasq": "dnsmasq-base", "openssl": "openssl"}


class TestbedError(RuntimeError):
    """The testbed cannot start or be reached; the message says what to do."""

    __test__ = False  # not a pytest test class despite the name


def find_binary(name: str) -> str:
    """Path of a system tool, also looking in sbin directories that a non-root PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    package = _PACKAGES.get(name, name)
    raise TestbedError(f"'{name}' not found on PATH or in {', '.join(_SBIN_DIRS)}; "
                       f"the testbed needs it (Debian/Ubuntu: apt-get install {package})")


@dataclass
class Child:
    """A started process: pid (= its process group), a marker string in its command line, and
    the Popen object when this process is its parent (so it can be reaped, leaving no zombie)."""

    name: str
    pid: int
    marker: str
    popen: subprocess.Popen[bytes] | None = None


def spawn(name: str, args: list[str], log: Path, marker: str, env: dict[str, str] | None = None) -> Child:
    """Start ``args`` detached (new session, stdin closed, output to ``log``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True, env=env)
    return Child(name, popen.pid, marker, popen)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, pgrp) of a process, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] == pgid and st[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def cmdline(pid: int) -> str:
    """Command line of a process ('' if gone), to check a recorded pid is still ours."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _reap(child: Child) -> None:
    if child.popen is not None:
        with contextlib.suppress(Exception):
            child.popen.poll()


def terminate(child: Child, timeout: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left; never touch a reused pid."""
    _reap(child)
    if alive(child.pid) and child.marker not in cmdline(child.pid):
        return  # the pid now belongs to some other program
    if not group_members(child.pid):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(child)
            if not group_members(child.pid):
                _reap(child)
                return
            time.sleep(0.02)


def tail(path: Path, lines: int = 15) -> str:
    """Last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
