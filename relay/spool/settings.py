"""What a spool's settings are: budgets, policies, their defaults.

Values only, no I/O and no trio: the config imports them; relay/spool/spool.py
acts on them.
"""

from __future__ import annotations

import dataclasses
import enum

# rsyslog's action queues default to 1,000 messages in memory, its main queue
# to 100,000. A relay node buffers more: 100,000 messages or 64 MiB, whichever
# comes first (a limit in messages alone multiplies by the message size and is
# how rsyslog users run out of RAM, rsyslog#3314).
DEFAULT_MAX_MESSAGES = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Disk a spool may use past its memory budget: an hour of a busy relay at
# 1,000 msg/s of 300 bytes. Zero keeps the queue in memory only.
DEFAULT_DISK_MAX_BYTES = 1024**3

# What the disk part leaves free beyond what a stop needs to save the memory
# part. It covers what the spool does not count (a new segment's header, the
# metadata file and its temporary copy, the file system's rounding up to whole
# blocks: a few KiB) and, the larger share, what other processes write to the
# same file system between two readings of its free space (up to a second).
# 16 MiB is a second of a host writing 16 MiB/s of its own logs to /var.
DEFAULT_DISK_RESERVE = 16 * 1024 * 1024


class OnFull(enum.StrEnum):
    """What a spool does when its disk budget (or, without disk, its memory
    budget) is spent."""

    BLOCK = "block"  # take no more: reliable inputs stop reading, lossy ones drop
    DROP_OLDEST = "drop_oldest"  # make room by dropping the oldest queued messages
    DROP_NEWEST = "drop_newest"  # drop what arrives


class Durability(enum.StrEnum):
    """When queued messages reach the disk, and so what a crash costs."""

    MEMORY = "memory"  # RAM first; disk past the memory budget and at stop
    DISK = "disk"  # every batch written to disk as it is queued
    FSYNC = "fsync"  # as "disk", and fsync'ed (per batch, or every fsync_interval)


@dataclasses.dataclass(frozen=True, slots=True)
class SpoolSettings:
    max_messages: int = DEFAULT_MAX_MESSAGES
    max_bytes: int = DEFAULT_MAX_BYTES
    disk_max_bytes: int = 0  # no disk unless a directory and a budget are given
    on_full: OnFull = OnFull.BLOCK
    durability: Durability = Durability.MEMORY
    fsync_interval: float = 0.0
    disk_reserve: int = DEFAULT_DISK_RESERVE  # free space the disk part leaves (diskspace.py)
