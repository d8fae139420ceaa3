"""How much a spool may still write to its file system.

A spool's ``disk_max_bytes`` is a budget, not a promise that the disk has
that much room: the file system may be smaller, or shared with other writers.
The spool must never fill it: at stop it writes what memory holds to disk,
and if that write fails the memory part is lost. So the disk part takes a
record only while the file system keeps free, after the record, what a stop
would write (the memory part, :meth:`DiskSpace.admits`'s ``keep``) plus a
reserve for everything nobody counts (see DEFAULT_DISK_RESERVE).

Free space is read with ``statvfs`` (``f_bavail * f_frsize``: what an
unprivileged writer may use; root's reserved blocks stay the admin's), which
is a system call: not once per batch. The reading is kept as an estimate,
lowered by what the spool writes and raised by the segments it deletes, and
read again every REFRESH_BYTES written and whenever the spool's housekeeping
asks (every second): what other processes write is noticed within a second.

No trio and no clock here; the function that reads the free space is
injected, so tests set the free space to whatever they need.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from relay.spool.settings import DEFAULT_DISK_RESERVE

# Read the free space again after the spool itself wrote this much: the
# estimate never drifts far even when the clock-driven reading is late.
REFRESH_BYTES = 4 * 1024 * 1024
# Once refusing, take again only when this much more than needed is free, so
# that a file system on the edge does not flip (and log) with every batch.
RESUME_MARGIN = 1024 * 1024


def statvfs_free(directory: Path) -> int:
    """Bytes an unprivileged process may still write to the file system of ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class DiskSpace:
    """The free space of a spool's file system, estimated between readings.

    ``free_space`` reads it (default: :func:`statvfs_free`); until the first
    :meth:`refresh` the estimate is 0, so nothing is admitted unread.
    """

    def __init__(
        self,
        directory: Path,
        reserve: int = DEFAULT_DISK_RESERVE,
        free_space: Callable[[Path], int] = statvfs_free,
    ) -> None:
        self.directory = directory
        self.reserve = reserve
        self._free_space = free_space
        self.free = 0  # the estimate: the last reading, less what we wrote since
        # Set by the spool while it refuses for lack of room: admits() then asks
        # for RESUME_MARGIN more.
        self.refusing = False
        self._written = 0  # bytes written since the last reading

    def refresh(self) -> None:
        """Read the free space again. An error reading it keeps the estimate."""
        try:
            self.free = self._free_space(self.directory)
        except OSError:
            return  # the write that follows reports what is wrong with the disk
        self._written = 0

    def wrote(self, nbytes: int) -> None:
        """The spool wrote ``nbytes`` to the file system."""
        self.free -= nbytes
        self._written += nbytes
        if self._written >= REFRESH_BYTES:
            self.refresh()

    def freed(self, nbytes: int) -> None:
        """The spool deleted a file of ``nbytes``."""
        self.free += nbytes

    def exhausted(self) -> None:
        """A write failed for lack of space (ENOSPC, EDQUOT): nothing is free
        until the next reading says otherwise."""
        self.free = 0

    def admits(self, need: int, keep: int) -> bool:
        """Whether ``need`` more bytes may be written, leaving ``keep`` bytes
        (what a stop writes) plus the reserve free."""
        margin = RESUME_MARGIN if self.refusing else 0
        return self.free - need - keep - self.reserve >= margin
