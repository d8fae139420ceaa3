"""Finding the relay that runs on a state directory, for ``relay reload``.

A running relay holds an flock(2) on ``state_dir/lock`` (one relay per state
directory: its spools must have one owner) and writes its pid into that
file. The pid alone could be stale (a relay that was killed leaves its file
behind, and the pid may be another process's by now), so the lock is what
says a relay runs: the kernel lists the locks held in /proc/locks, by inode.
Where that cannot be read, the pid must at least name a live process.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from relay.errors import RelayError

LOCKS = Path("/proc/locks")


class NotRunning(RelayError):
    """No relay holds the state directory, or it cannot be signalled (one line why)."""


def running_pid(state_dir: Path, *, locks: Path = LOCKS) -> int:
    """The pid of the relay running on ``state_dir``; NotRunning says why not."""
    lock = state_dir / "lock"
    try:
        text = lock.read_text(encoding="ascii", errors="replace")
        holders = _flock_holders(os.stat(lock).st_ino, locks)
    except FileNotFoundError:
        raise NotRunning(f"no relay is running with state_dir {state_dir} (no {lock})") from None
    except OSError as exc:
        raise NotRunning(f"cannot read {lock}: {exc.strerror or exc}") from None
    if holders == set():
        raise NotRunning(
            f"no relay is running with state_dir {state_dir} (nothing holds the lock {lock})"
        )
    try:
        pid = int(text.strip())
    except ValueError:
        raise NotRunning(
            f"{lock} does not hold the pid of the relay that runs there (started by an "
            "older relay?); send it SIGHUP yourself"
        ) from None
    if (holders is not None and pid not in holders) or not _alive(pid):
        raise NotRunning(f"no relay is running with state_dir {state_dir} (pid {pid} is gone)")
    return pid


def reload(state_dir: Path, *, locks: Path = LOCKS) -> int:
    """Send SIGHUP to the relay running on ``state_dir``; returns its pid."""
    pid = running_pid(state_dir, locks=locks)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise NotRunning(f"the relay with state_dir {state_dir} (pid {pid}) is gone") from None
    except PermissionError:
        raise NotRunning(
            f"not allowed to signal the relay (pid {pid}): run relay reload as its user or root"
        ) from None
    return pid


def _flock_holders(inode: int, locks: Path) -> set[int] | None:
    """The pids holding an flock on the file with ``inode`` (matched by inode:
    an overlay file system may name another device); None if the kernel's
    list cannot be read."""
    try:
        lines = locks.read_text().splitlines()
    except OSError:
        return None
    holders = set()
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; a waiter has "->" after the id.
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            holders.add(int(fields[4]))
    return holders


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
