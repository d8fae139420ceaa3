"""relay/spool/diskspace.py: the free space a spool may still write to."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from relay.spool.diskspace import REFRESH_BYTES, RESUME_MARGIN, DiskSpace, statvfs_free

MiB = 1024 * 1024


class Reading:
    """A free-space function the test sets; counts how often it is read."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.reads = 0
        self.error: OSError | None = None

    def __call__(self, directory: Path) -> int:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return self.free


def test_statvfs_free_is_what_an_unprivileged_writer_may_use(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    assert statvfs_free(tmp_path) == st.f_bavail * st.f_frsize


def test_nothing_is_admitted_before_the_first_reading() -> None:
    space = DiskSpace(Path("/nowhere"), reserve=0, free_space=Reading(100 * MiB))
    assert not space.admits(1, 0)


def test_admits_keeps_what_a_stop_writes_plus_the_reserve() -> None:
    space = DiskSpace(Path("/d"), reserve=2 * MiB, free_space=Reading(10 * MiB))
    space.refresh()
    assert space.admits(5 * MiB, 3 * MiB)  # 10 - 5 - 3 = 2: the reserve, exactly
    assert not space.admits(5 * MiB + 1, 3 * MiB)
    assert not space.admits(1, 8 * MiB)  # memory alone needs all but the reserve


def test_refusing_takes_again_only_past_the_margin() -> None:
    reading = Reading(10 * MiB)
    space = DiskSpace(Path("/d"), reserve=0, free_space=reading)
    space.refresh()
    space.refusing = True
    assert not space.admits(10 * MiB - RESUME_MARGIN + 1, 0)
    assert space.admits(10 * MiB - RESUME_MARGIN, 0)


def test_the_estimate_follows_writes_and_deletes_and_is_read_again_every_few_mib() -> None:
    reading = Reading(100 * MiB)
    space = DiskSpace(Path("/d"), free_space=reading)
    space.refresh()
    for _ in range(REFRESH_BYTES // (64 * 1024) - 1):
        space.wrote(64 * 1024)  # per batch written: no system call
    assert reading.reads == 1
    assert space.free == 100 * MiB - REFRESH_BYTES + 64 * 1024
    space.freed(MiB)
    assert space.free == 101 * MiB - REFRESH_BYTES + 64 * 1024
    reading.free = 50 * MiB  # another process wrote meanwhile
    space.wrote(64 * 1024)  # REFRESH_BYTES written since the reading: read again
    assert reading.reads == 2
    assert space.free == 50 * MiB


def test_enospc_means_nothing_is_free_until_read_again() -> None:
    reading = Reading(100 * MiB)
    space = DiskSpace(Path("/d"), reserve=0, free_space=reading)
    space.refresh()
    space.exhausted()
    assert not space.admits(1, 0)
    space.refresh()
    assert space.admits(1, 0)


def test_a_failed_reading_keeps_the_estimate() -> None:
    reading = Reading(100 * MiB)
    space = DiskSpace(Path("/d"), free_space=reading)
    space.refresh()
    space.wrote(MiB)
    reading.error = OSError(errno.EIO, "Input/output error")
    space.refresh()
    assert space.free == 99 * MiB
