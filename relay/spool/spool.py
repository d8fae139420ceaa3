"""An output's spool: memory first, disk behind it, FIFO across both.

The queue is two parts, and everything in the first is older than everything
in the second:

* ``memory``: a deque of entries, each a batch plus, when the batch is also
  on disk, the segment and offset where its record ends;
* ``disk``: append-only segment files (relay/spool/segment.py) holding the
  batches that are only on disk, oldest first.

A batch goes to memory only while nothing waits on disk and memory has room;
otherwise it is appended to the disk part. The output takes batches from the
head of memory; when memory runs low, records are read from the head of the
disk part into it. So order holds across both, an upstream that keeps up
never causes disk I/O (durability "memory"), and an outage fills RAM to its
budget and then the disk.

With durability "disk" or "fsync" every batch is written to disk as it is
queued (and kept in memory too while there is room), so a crash of the relay
loses nothing queued; "fsync" also survives a power loss, per batch or every
``fsync_interval`` seconds.

What is delivered is acked from the head. A segment file is deleted once
every record in it is acked. A small metadata file, replaced atomically,
records the order of the segments and where the first unacked record of each
starts; it is rewritten at stop and at most once a second while acking, so a
crash can at worst deliver again what was acked in that last second.

At stop, whatever memory holds is written to a new segment placed first, so
the next start replays it before anything else. For that write to succeed,
the disk part never fills its file system: it takes a record only while the
file system keeps free what memory holds plus ``disk_reserve``
(relay/spool/diskspace.py); short of that, "disk full" is "disk budget
spent" and ``on_full`` applies, before any write fails. An ENOSPC that
happens anyway (another process filled the disk) is handled the same way.

At start every segment is checked record by record (CRC); damaged records
go to a quarantine file and are counted, intact ones are kept, and the relay
always starts.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

from relay.errors import ParseError
from relay.message import Batch
from relay.spool import segment
from relay.spool.diskspace import DiskSpace, statvfs_free
from relay.spool.record import FRAME_HEADER_SIZE, MIN_PAYLOAD, encode_record
from relay.spool.settings import (
    DEFAULT_DISK_MAX_BYTES,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MESSAGES,
    Durability,
    OnFull,
    SpoolSettings,
)
from relay.stats import Counters

__all__ = [  # the settings are also importable from here
    "DEFAULT_DISK_MAX_BYTES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MESSAGES",
    "Durability",
    "OnFull",
    "SpoolSettings",
]

log = logging.getLogger("relay.spool")

META = "spool.meta"
# A segment is closed and a new one begun past this size: small enough that
# drop_oldest frees space in useful steps and a drained segment is deleted
# soon, large enough that an outage does not make thousands of files.
SEGMENT_MAX = 16 * 1024 * 1024
# How much one refill reads from disk into memory.
REFILL_BYTES = 4 * 1024 * 1024
# How much one write of the memory part at stop carries (what it holds on top
# of the memory part: the encoded records, then their joined buffer).
SAVE_CHUNK = 1024 * 1024
# How often the ack position is saved while acking (what a crash can repeat).
CHECKPOINT_INTERVAL = 1.0
# A write error other than a full disk (EIO...) is logged at most this often.
ERROR_LOG_INTERVAL = 60.0
# What a record adds to its batch's bytes, beyond 4 bytes per message: frame
# and payload headers, peer and input names (generously: the reserve takes up
# what a longer name adds). For the size of what a stop writes.
RECORD_OVERHEAD = FRAME_HEADER_SIZE + MIN_PAYLOAD + 128
# Write errors that mean "no room": the disk or the user's quota is full.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})
# An output that has acked nothing for this long while memory holds batches is
# stalled (its upstream is down or stuck): new batches spill to disk rather
# than wait for it.
STALL_AFTER = 0.5

COUNTERS = (
    "written_to_disk",
    "read_from_disk",
    "dropped_oldest",
    "dropped_newest",
    "corrupt_records",
    "missing_messages",
    "saved_at_stop",
    "disk_errors",
)


class Admission(enum.StrEnum):
    """What :meth:`Spool.put_nowait` did with a batch."""

    QUEUED = "queued"
    DROPPED = "dropped"  # by the on_full policy, counted by the spool
    FULL = "full"  # on_full = block: not taken; the caller waits or counts a drop
    WOULD_SPILL = "would_spill"  # memory is full: only with spill=False, nothing taken


@dataclasses.dataclass(frozen=True, slots=True)
class SpoolStatistics:
    memory_messages: int
    memory_bytes: int
    disk_messages: int  # only on disk, waiting to be read back
    disk_bytes: int  # size of the segment files
    segments: int
    oldest_received: float | None


@dataclasses.dataclass(slots=True)
class _Entry:
    batch: Batch
    seg: int | None = None  # the segment holding a copy, if any
    end: int = 0  # where its record ends in that segment
    size: int = 0  # its memory_size when it joined memory (what leaving gives back)


@dataclasses.dataclass(slots=True)
class _Segment:
    id: int
    path: Path
    size: int  # bytes in the file
    start: int = segment.FIRST_RECORD  # first record not yet acked (saved in the metadata)
    read: int = segment.FIRST_RECORD  # next record to read into memory
    messages: int = 0  # messages in records at or after ``start`` when opened/written
    read_messages: int = 0  # of those, read into memory (or kept there when written)
    acked_messages: int = 0  # of those, acked
    first_received: float | None = None


class Spool:
    """The queue in front of one output. See the module docstring."""

    def __init__(
        self,
        name: str,
        settings: SpoolSettings,
        counters: Counters,
        directory: Path | None = None,
        *,
        free_space: Callable[[Path], int] = statvfs_free,
    ) -> None:
        if directory is None and settings.durability is not Durability.MEMORY:
            raise ValueError("durability on disk needs a directory")
        self.name = name
        self.settings = settings
        self.counters = counters
        self.directory = directory
        self._space = (
            None if directory is None else DiskSpace(directory, settings.disk_reserve, free_space)
        )
        self._write_errors = 0  # failed writes not logged yet (ERROR_LOG_INTERVAL)
        self._error_logged: float | None = None
        self._memory: collections.deque[_Entry] = collections.deque()
        self._memory_messages = 0
        self._memory_bytes = 0  # of the messages, as the stats show them
        # What memory holds really takes (Batch.memory_size): what max_bytes bounds.
        self._memory_size = 0
        self._segments: collections.deque[_Segment] = collections.deque()
        self._disk_messages = 0
        self._disk_bytes = 0
        self.recovered = 0  # messages found on disk at open(), from an earlier run
        self._writer: segment.SegmentWriter | None = None
        self._next_id = 0
        self._peeked = 0  # head entries handed to the output and not yet acked
        self._dirty = False  # written since the last fsync
        self._synced = trio.Event()  # set (and replaced) after each group fsync
        self._checkpoint_due = False
        self._changed = trio.Event()
        self._refilling = False
        self._last_ack: float | None = None  # set at the first ack or stall check
        self._interrupted = False  # interrupt_wait() was called

    # -- start: open what an earlier run left -------------------------------

    async def open(self) -> None:
        """Recover and adopt the segments in ``directory``; log what will replay."""
        if self.directory is None or self._space is None:
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._space.refresh()
        order = self._read_meta()
        ids = await trio.to_thread.run_sync(segment.list_segments, self.directory)
        listed = [i for i, _, _ in order if i in ids]
        ordered = listed + [i for i in ids if i not in listed]
        starts = {i: start for i, start, _ in order}
        recorded = {i: messages for i, _, messages in order}
        missing = sum(recorded[i] for i in recorded if i not in ids)
        for seg_id in ordered:
            seg, report = await trio.to_thread.run_sync(
                self._adopt, seg_id, starts.get(seg_id, segment.FIRST_RECORD)
            )
            found = seg.messages if seg is not None else 0
            missing += max(0, recorded.get(seg_id, 0) - found)
            if report.damaged_regions:
                self.counters.add("corrupt_records", report.damaged_records)
                log.error(
                    "spool %s: segment %s was damaged: %d records (%d bytes) could not be read "
                    "and were moved to %s; %d intact records (%d messages) are kept",
                    self.name,
                    self._path(seg_id).name,
                    report.damaged_records,
                    report.damaged_bytes,
                    report.quarantine,
                    report.intact_records,
                    report.intact_messages,
                )
            if seg is not None:
                self._segments.append(seg)
                self._disk_messages += seg.messages
                self._disk_bytes += seg.size
        self._next_id = max(ids, default=-1) + 1
        self.recovered = self._disk_messages
        if missing:
            # What the metadata says was there and is not: cut off by a
            # truncation, in damaged records, or in a segment file that is gone.
            self.counters.add("missing_messages", missing)
            log.error(
                "spool %s: %d messages that were queued on disk are missing (damaged, "
                "truncated or deleted segment files); they cannot be delivered",
                self.name,
                missing,
            )
        if self._segments:
            log.info(
                "spool %s: replaying %d messages (%.1f MiB) from %d segments first",
                self.name,
                self._disk_messages,
                self._disk_bytes / 2**20,
                len(self._segments),
            )
            self._write_meta()

    def _adopt(self, seg_id: int, start: int) -> tuple[_Segment | None, segment.RecoveryReport]:
        """Check one segment left by an earlier run (runs in a worker thread)."""
        path = self._path(seg_id)
        report = segment.recover(path)
        start = report.translate(start)  # offsets move when damage is cut out
        size = path.stat().st_size
        seg = _Segment(seg_id, path, size, start=start, read=start)
        # Count the messages still to deliver (from ``start`` on).
        offset = start
        while offset < size:
            records, offset_next = segment.read_records(path, offset, REFILL_BYTES)
            if not records:
                break
            seg.messages += sum(len(b) for b, _ in records)
            offset = offset_next
        if seg.messages == 0:
            path.unlink()
            return None, report
        return seg, report

    # -- queueing ------------------------------------------------------------

    def __len__(self) -> int:
        """Messages queued, in memory and on disk."""
        return self._memory_messages + self._disk_messages

    def memory_full(self) -> bool:
        """Whether memory is at its budget (in messages, or in the bytes the
        batches take there: more than their messages' bytes, see
        Batch.memory_size)."""
        return (
            self._memory_messages >= self.settings.max_messages
            or self._memory_size >= self.settings.max_bytes
        )

    def stalled(self) -> bool:
        """Memory holds batches and the output has acked none for STALL_AFTER."""
        now = trio.current_time()
        if self._last_ack is None:
            self._last_ack = now
        return bool(self._memory) and now - self._last_ack >= STALL_AFTER

    def put_nowait(self, batch: Batch, *, spill: bool = True) -> str:
        """Queue ``batch`` if the policy allows; returns an :class:`Admission`.

        With ``spill=False`` a batch that would go to disk only because memory
        is full is not taken: WOULD_SPILL. (When older batches already wait on
        disk, a new one goes there anyway: waiting for room in memory would not
        let it in before them.)
        """
        settings = self.settings
        to_memory = not self.memory_full() and self._disk_messages == 0
        if not to_memory and not spill and not self._disk_messages and self.directory:
            return Admission.WOULD_SPILL
        write_through = settings.durability is not Durability.MEMORY
        if to_memory and not write_through:
            self._append_memory(_Entry(batch))
            return Admission.QUEUED
        if self.directory is None or not settings.disk_max_bytes:
            return self._full(batch, memory_only=True)
        payload = encode_record(batch)
        need = FRAME_HEADER_SIZE + len(payload)
        # What a stop writes (all of memory), with this batch if it joins memory.
        keep = self._save_size() + (need if to_memory else 0)
        if not self._disk_admits(need, keep):
            return self._full(batch, memory_only=False)
        try:
            end = self._write(payload, batch)
        except OSError as exc:
            self.counters.add("disk_errors")
            if exc.errno in _NO_ROOM:
                # Another process filled the disk: the same as no room. Not even
                # to memory: with write-through, queued means on disk (RELP
                # answers on it), and what memory holds must still be saved.
                self._no_room(exc)
                return self._full(batch, memory_only=False)
            self._write_failed(exc)
            if to_memory:  # keep it in memory: never lose what fits there
                self._append_memory(_Entry(batch))
                return Admission.QUEUED
            return self._full(batch, memory_only=False)
        seg = self._segments[-1]
        if to_memory:  # also in memory: the copy on disk is for a crash
            seg.read = end
            seg.read_messages += len(batch)
            self._append_memory(_Entry(batch, seg.id, end))
        else:
            self._disk_messages += len(batch)
            self.counters.add("written_to_disk", len(batch))
        self._notify()
        return Admission.QUEUED

    def refuses(self, batch: Batch) -> bool:
        """Whether :meth:`put_nowait` would answer FULL for ``batch`` now (on_full =
        block, memory and disk budgets spent), without taking it. An input that
        can tell its sender to come back later (HTTP 429) asks every spool
        first, so that a request is queued whole or not at all. An estimate
        (a record's exact size is known only once encoded), on the safe side.
        """
        settings = self.settings
        if settings.on_full is not OnFull.BLOCK:
            return False  # a drop_* policy takes it (dropping, counted)
        to_memory = not self.memory_full() and self._disk_messages == 0
        if to_memory and settings.durability is Durability.MEMORY:
            return False
        if self.directory is None or not settings.disk_max_bytes:
            return not to_memory
        need = RECORD_OVERHEAD + batch.nbytes + 4 * len(batch)
        keep = self._save_size() + (need if to_memory else 0)
        space = self._space
        return self._disk_bytes + need > settings.disk_max_bytes or (
            space is not None and not space.admits(need, keep)
        )

    async def put(self, batch: Batch) -> str:
        """Queue ``batch``, waiting while the spool is full and the policy is block."""
        while True:
            admission = self.put_nowait(batch)
            if admission != Admission.FULL:
                return admission
            await self._changed.wait()

    def keep_at_stop(self, batch: Batch) -> None:
        """At stop: take ``batch`` past every budget and policy, to be saved
        with the rest (:meth:`save`); for what a reliable input read while the
        spool was full. Behind what waits on disk if anything does (order
        holds), else in memory; in memory also if that write fails."""
        if self._disk_messages and self.directory is not None:
            try:
                self._write(encode_record(batch), batch)
            except OSError as exc:
                self.counters.add("disk_errors")
                log.error("spool %s: cannot write to %s: %s", self.name, self.directory, exc)
            else:
                self._disk_messages += len(batch)
                self.counters.add("written_to_disk", len(batch))
                return
        self._append_memory(_Entry(batch))

    def reconfigure(self, settings: SpoolSettings) -> None:
        """A reload: new budgets and policies for what is queued from now on.

        Nothing queued moves or is dropped: a memory part over its new budget
        only takes no more until it is back under it. The directory stays the
        one the spool was opened with (a spool without one stays in memory:
        the caller keeps its disk settings off until a restart).
        """
        if self.directory is None and settings.disk_max_bytes:
            raise ValueError("a spool opened without a directory cannot get one")
        self.settings = settings
        if self._space is not None:
            self._space.reserve = settings.disk_reserve
        self._notify()  # puts waiting for room look again, with the new budgets

    def _append_memory(self, entry: _Entry) -> None:
        self._memory.append(entry)
        entry.size = entry.batch.memory_size()
        self._memory_messages += len(entry.batch)
        self._memory_bytes += entry.batch.nbytes
        self._memory_size += entry.size
        self._notify()

    def _pop_memory(self) -> _Entry:
        """Remove the head of memory (acked or dropped)."""
        entry = self._memory.popleft()
        self._memory_messages -= len(entry.batch)
        self._memory_bytes -= entry.batch.nbytes
        self._memory_size -= entry.size
        return entry

    def _write(self, payload: bytes, batch: Batch) -> int:
        """Append one record to the current segment; returns its end offset."""
        assert self.directory is not None
        writer = self._writer
        if writer is None or writer.size >= self._segment_max():
            if writer is not None:
                if self._dirty and self.settings.durability is Durability.FSYNC:
                    writer.fsync()  # the interval's last writes to this segment
                writer.close()
                self._writer = None  # also if creating the next one fails
            writer = self._writer = segment.SegmentWriter.create(self.directory, self._next_id)
            self._segments.append(
                _Segment(
                    self._next_id,
                    self._path(self._next_id),
                    writer.size,
                    first_received=batch.received,
                )
            )
            self._disk_bytes += writer.size
            if self._space is not None:
                self._space.wrote(writer.size)
            self._next_id += 1
        before = writer.size
        (end,) = writer.append([payload])
        seg = self._segments[-1]
        seg.size = writer.size
        seg.messages += len(batch)
        self._disk_bytes += writer.size - before
        if self._space is not None:
            self._space.wrote(writer.size - before)
        if self.settings.durability is Durability.FSYNC and self.settings.fsync_interval == 0:
            writer.fsync()
        else:
            self._dirty = True
        return end

    def _segment_max(self) -> int:
        # An eighth of what the disk part may hold: of its budget, or of what the
        # file system has room for, if that is less (drop_oldest drops segments).
        room = self.settings.disk_max_bytes
        if self._space is not None:
            room = min(room, self._space.free + self._disk_bytes)
        return max(64 * 1024, min(SEGMENT_MAX, room // 8))

    def _full(self, batch: Batch, *, memory_only: bool) -> str:
        """The budget is spent: apply on_full."""
        policy = self.settings.on_full
        if policy is OnFull.DROP_NEWEST:
            self.counters.add("dropped_newest", len(batch))
            return Admission.DROPPED
        if policy is OnFull.DROP_OLDEST and memory_only and self._drop_oldest_memory(batch):
            self._append_memory(_Entry(batch))
            return Admission.QUEUED
        return Admission.FULL

    def _drop_oldest_memory(self, batch: Batch) -> bool:
        """Drop the oldest batches not handed to the output yet, to fit ``batch``."""
        kept = [self._memory.popleft() for _ in range(min(self._peeked, len(self._memory)))]
        dropped = 0
        size = batch.memory_size()
        while self._memory and (
            self._memory_messages + len(batch) > self.settings.max_messages
            or self._memory_size + size > self.settings.max_bytes
        ):
            dropped += len(self._pop_memory().batch)
        self._memory.extendleft(reversed(kept))
        self.counters.add("dropped_oldest", dropped)
        return dropped > 0 or not self._memory

    def _disk_admits(self, need: int, keep: int) -> bool:
        """Whether ``need`` bytes may go to disk: within disk_max_bytes, and
        leaving the file system ``keep`` bytes (what a stop writes) plus the
        reserve. drop_oldest drops whole segments from the head of the disk
        part to make room; the other policies refuse."""
        space = self._space
        while True:
            over_budget = self._disk_bytes + need > self.settings.disk_max_bytes
            no_room = space is not None and not space.admits(need, keep)
            if not over_budget and not no_room:
                break
            if self.settings.on_full is not OnFull.DROP_OLDEST or not self._drop_oldest_segment(
                over_budget
            ):
                if no_room:
                    self._no_room(None, need, keep)
                return False
        if space is not None and space.refusing:
            space.refusing = False
            log.info(
                "spool %s: %.1f MiB free on the file system of %s again: taking on disk again",
                self.name,
                space.free / 2**20,
                self.directory,
            )
        return True

    def _drop_oldest_segment(self, over_budget: bool) -> bool:
        """drop_oldest: drop the oldest segment not yet read; False if there is none."""
        victim = next((s for s in self._segments if s.read < s.size), None)
        if victim is None:
            return False
        if self._writer is not None and victim is self._segments[-1]:
            self._writer.close()
            self._writer = None
        lost = victim.messages - victim.read_messages
        self._disk_messages -= lost
        self.counters.add("dropped_oldest", lost)
        log.warning(
            "spool %s: %s; dropped the oldest %d messages (on_full = drop_oldest)",
            self.name,
            f"disk budget of {self.settings.disk_max_bytes} bytes spent"
            if over_budget
            else f"no room on the file system of {self.directory}",
            lost,
        )
        self._delete(victim)
        return True

    def _save_size(self) -> int:
        """About what :meth:`save` writes at a stop: all of memory, as records."""
        return self._memory_bytes + 4 * self._memory_messages + RECORD_OVERHEAD * len(self._memory)

    def _no_room(self, exc: OSError | None, need: int = 0, keep: int = 0) -> None:
        """Refuse to write for lack of room (``exc``: a write failed so); one
        line when the spool starts refusing, not one per batch."""
        space = self._space
        assert space is not None
        if exc is not None:
            space.exhausted()
        if space.refusing:
            return
        space.refusing = True
        if exc is not None:
            why = f"cannot write to {self.directory}: {exc.strerror}"
        else:
            why = (
                f"the file system of {self.directory} has {space.free / 2**20:.1f} MiB free, "
                f"and must keep {keep / 2**20:.1f} MiB to save the memory part at a stop "
                f"plus disk_reserve = {space.reserve / 2**20:.1f} MiB"
            )
        log.warning(
            "spool %s: %s: taking nothing more on disk until there is room (on_full = %s)",
            self.name,
            why,
            self.settings.on_full,
        )

    def _write_failed(self, exc: OSError) -> None:
        """Log a write error (other than no room) at most every ERROR_LOG_INTERVAL."""
        self._write_errors += 1
        now = trio.current_time()
        if self._error_logged is not None and now - self._error_logged < ERROR_LOG_INTERVAL:
            return
        log.error(
            "spool %s: cannot write to %s: %s%s",
            self.name,
            self.directory,
            exc.strerror,
            f" ({self._write_errors} failed writes since the last such line)"
            if self._write_errors > 1
            else "",
        )
        self._error_logged = now
        self._write_errors = 0

    # -- the output's side ---------------------------------------------------

    async def wait_batches(self, max_bytes: int, skip: int = 0) -> list[Batch]:
        """Head batches after the first ``skip``, up to ``max_bytes`` (at least one).

        Waits until there is one, or returns none after :meth:`interrupt_wait`.
        They stay queued until :meth:`ack`.
        """
        while True:
            if (
                self._disk_messages
                and not self._refilling
                and (len(self._memory) <= skip or self._memory_bytes < REFILL_BYTES)
            ):
                await self._refill()
            if len(self._memory) > skip:
                break
            if self._interrupted:
                self._interrupted = False
                return []
            await self._changed.wait()
        return self.batches_nowait(max_bytes, skip)

    def ready(self, skip: int = 0) -> bool:
        """Whether :meth:`wait_batches` with ``skip`` would return without
        waiting for a put (batches in memory after ``skip``, or on disk)."""
        return len(self._memory) > skip or self._disk_messages > 0

    def interrupt_wait(self) -> None:
        """The output's :meth:`wait_batches` returns now, with no batches (a
        reload is handing the spool over); if it is not waiting, its next wait
        returns at once, once."""
        self._interrupted = True
        self._notify()

    def batches_nowait(self, max_bytes: int, skip: int = 0) -> list[Batch]:
        """:meth:`wait_batches` without waiting (and without reading from disk):
        what memory holds after the first ``skip``; may be empty."""
        out: list[Batch] = []
        total = 0
        memory = self._memory
        for i in range(skip, len(memory)):
            batch = memory[i].batch
            if out and total + batch.nbytes > max_bytes:
                break
            out.append(batch)
            total += batch.nbytes
        self._peeked = skip + len(out)
        return out

    def ack(self, count: int) -> None:
        """The ``count`` head batches are delivered: remove them for good."""
        last: _Entry | None = None
        acked: dict[int, int] = {}
        for _ in range(count):
            entry = self._pop_memory()
            if entry.seg is not None:
                last = entry
                acked[entry.seg] = acked.get(entry.seg, 0) + len(entry.batch)
        for seg in self._segments:
            seg.acked_messages += acked.get(seg.id, 0)
        self._peeked = max(0, self._peeked - count)
        self._last_ack = trio.current_time()
        if last is not None:
            self._acked_through(last)
        self._notify()

    def _acked_through(self, entry: _Entry) -> None:
        """Everything up to ``entry`` is acked: advance the start, delete used segments."""
        # By position, not id: the segment saved at stop has the highest id but
        # comes first. One that is gone (dropped by on_full) needs nothing.
        index = next((i for i, s in enumerate(self._segments) if s.id == entry.seg), None)
        if index is None:
            return
        for _ in range(index):
            self._delete(self._segments[0])  # fully read, and acked before this one
        seg = self._segments[0]
        seg.start = entry.end
        finished = seg.read == seg.size and entry.end == seg.size
        if finished and (seg is not self._segments[-1] or self._writer is None):
            self._delete(seg)
        elif finished and (seg.size >= self._segment_max() // 4 or not len(self)):
            assert self._writer is not None
            self._writer.close()  # the write segment is used up: start a new one
            self._writer = None
            self._delete(seg)
        self._checkpoint_due = True

    async def _refill(self) -> None:
        """Read the next records from the head of the disk part into memory."""
        seg = next((s for s in self._segments if s.read < s.size), None)
        # Room on disk is about room in memory, less what the batches take
        # there beyond their bytes (see Batch.memory_size): the loop below
        # stops at the budget.
        room = min(REFILL_BYTES, self.settings.max_bytes - self._memory_size)
        if seg is None or (
            self._memory and (room <= 0 or self._memory_messages >= self.settings.max_messages)
        ):
            return
        self._refilling = True
        try:
            buffer, spans = await trio.to_thread.run_sync(
                segment.read_frames, seg.path, seg.read, max(room, 1)
            )
            records, _ = segment.decode_frames(seg.path, seg.read, buffer, spans)
            del buffer
        except (OSError, ParseError) as exc:
            # A segment that cannot be read now (it was checked at start): keep
            # the rest of the queue moving; the next start quarantines it.
            self.counters.add("disk_errors")
            log.error("spool %s: cannot read %s: %s; skipping it", self.name, seg.path.name, exc)
            lost = seg.messages - seg.read_messages
            self._disk_messages -= lost
            seg.read = seg.size
            return
        finally:
            self._refilling = False
        for batch, end in records:
            if self._memory and self.memory_full():
                break  # the rest stays on disk, to be read again later
            seg.read = end
            seg.read_messages += len(batch)
            self._disk_messages -= len(batch)
            self.counters.add("read_from_disk", len(batch))
            self._append_memory(_Entry(batch, seg.id, end))

    # -- housekeeping --------------------------------------------------------

    async def run(self) -> None:
        """Background work: group fsync and ack checkpoints, until cancelled."""
        interval = self.settings.fsync_interval or CHECKPOINT_INTERVAL
        while True:
            await trio.sleep(min(interval, CHECKPOINT_INTERVAL))
            self.sync()
            self.refresh_space()

    def refresh_space(self) -> None:
        """Read the free space of the disk's file system again (see diskspace.py).

        While refusing for lack of room, wake those waiting to put: there may
        be room now (the disk can be freed by others, or by an ack)."""
        if self._space is None:
            return
        self._space.refresh()
        if self._space.refusing:
            self._notify()

    async def wait_durable(self) -> None:
        """Until what is queued is as safe as ``durability`` promises.

        Only "fsync" with an ``fsync_interval`` has anything to wait for: the
        next group fsync (at once otherwise: with interval 0 every batch was
        fsync'ed as it was queued; "disk" and "memory" promise no fsync).
        RELP inputs acknowledge a message only after this.
        """
        if self._dirty and self.settings.durability is Durability.FSYNC:
            await self._synced.wait()

    def sync(self) -> None:
        """fsync what was written (durability fsync) and save the ack position."""
        if (
            self._dirty
            and self._writer is not None
            and (self.settings.durability is Durability.FSYNC)
        ):
            self._writer.fsync()
        self._dirty = False
        self._synced.set()
        self._synced = trio.Event()
        if self._checkpoint_due:
            self._checkpoint_due = False
            self._write_meta()

    def save(self) -> int:
        """At stop: write what only memory holds to a segment replayed first.

        Returns how many messages could not be saved (0 unless the disk failed
        or the spool has no disk at all).
        """
        unsaved = [e for e in self._memory]
        messages = sum(len(e.batch) for e in unsaved)
        if self.directory is None:
            return messages
        # Batches with no copy on disk: put there directly, or their segment was
        # dropped (drop_oldest) after they were read into memory.
        live = {s.id for s in self._segments}
        in_memory_only = any(e.seg is None or e.seg not in live for e in unsaved)
        try:
            if self._writer is not None:
                self._writer.fsync()
                self._writer.close()
                self._writer = None
            if in_memory_only:
                first = self._save_memory(unsaved)
                # What memory held from disk is in the new segment now: the old
                # copies start where reading stopped.
                for seg in self._segments:
                    seg.start = seg.read
                    seg.acked_messages = seg.read_messages
                self._segments.appendleft(first)
            self._write_meta()
        except OSError as exc:
            self.counters.add("disk_errors")
            log.error(
                "spool %s: cannot save %d messages at stop: %s", self.name, messages, exc.strerror
            )
            return messages
        if in_memory_only:
            self.counters.add("saved_at_stop", messages)
        return 0

    def _save_memory(self, entries: list[_Entry]) -> _Segment:
        """Write ``entries`` to a new segment, SAVE_CHUNK bytes per write: encoding
        them all at once would hold two more copies of the memory part at stop.
        On failure no part of the segment is left behind."""
        assert self.directory is not None
        writer = segment.SegmentWriter.create(self.directory, self._next_id)
        seg_id, self._next_id = self._next_id, self._next_id + 1
        try:
            chunk: list[bytes] = []
            size = 0
            for entry in entries:
                chunk.append(encode_record(entry.batch))
                size += len(chunk[-1])
                if size >= SAVE_CHUNK:
                    writer.append(chunk)
                    chunk, size = [], 0
            writer.append(chunk)
            writer.fsync()
        except BaseException:
            writer.close()
            self._path(seg_id).unlink(missing_ok=True)
            raise
        writer.close()
        messages = sum(len(e.batch) for e in entries)
        return _Segment(seg_id, self._path(seg_id), writer.size, messages=messages)

    def _delete(self, seg: _Segment) -> None:
        self._segments.remove(seg)
        self._disk_bytes -= seg.size
        seg.path.unlink(missing_ok=True)
        if self._space is not None:
            self._space.freed(seg.size)

    def _path(self, seg_id: int) -> Path:
        assert self.directory is not None
        return segment.segment_path(self.directory, seg_id)

    def _read_meta(self) -> list[tuple[int, int, int]]:
        """(segment id, first unacked offset, messages from there) in queue order."""
        assert self.directory is not None
        try:
            data = json.loads((self.directory / META).read_text())
            return [(int(i), int(start), int(n)) for i, start, n in data["segments"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:
            log.error(
                "spool %s: %s is unreadable (%s); replaying every segment in file order",
                self.name,
                META,
                exc,
            )
            return []

    def _write_meta(self) -> None:
        """Replace the metadata atomically: write, fsync, rename, fsync the directory."""
        if self.directory is None:
            return
        data = {
            "version": 1,
            "segments": [[s.id, s.start, s.messages - s.acked_messages] for s in self._segments],
        }
        tmp = self.directory / (META + ".tmp")
        with open(tmp, "w") as file:
            json.dump(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.directory / META)
        segment.fsync_directory(self.directory)

    def statistics(self) -> SpoolStatistics:
        oldest = self._memory[0].batch.received if self._memory else None
        if oldest is None and self._segments:
            oldest = self._segments[0].first_received
        return SpoolStatistics(
            memory_messages=self._memory_messages,
            memory_bytes=self._memory_bytes,
            disk_messages=self._disk_messages,
            disk_bytes=self._disk_bytes,
            segments=len(self._segments),
            oldest_received=oldest,
        )

    def peek(self, max_bytes: int) -> list[Batch]:
        """What memory holds, head first, up to ``max_bytes`` (at least one batch)."""
        out: list[Batch] = []
        total = 0
        for entry in self._memory:
            if out and total + entry.batch.nbytes > max_bytes:
                break
            out.append(entry.batch)
            total += entry.batch.nbytes
        return out

    async def wait_changed(self) -> None:
        """Wait until something is queued or acked."""
        await self._changed.wait()

    async def wait_empty(self) -> None:
        while len(self):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def memory_spool(
    max_messages: int = DEFAULT_MAX_MESSAGES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    on_full: OnFull = OnFull.BLOCK,
    name: str = "memory",
) -> Spool:
    """A spool with no disk part (tests, and outputs with disk_max_bytes = 0)."""
    settings = SpoolSettings(max_messages, max_bytes, 0, on_full)
    return Spool(name, settings, Counters("spool", name, COUNTERS))
