"""Spool segments: append-only files of framed records, and their crash recovery.

A segment is ``<dir>/<id:016d>.seg``: the 8-byte SEGMENT_HEADER, then records
as framed by :mod:`relay.spool.record`. Records are only ever appended, each
batch of them with one ``os.write``, so a reader in the same process never
sees half a record and a crash leaves at worst a torn tail.

After an unclean stop the spool runs :func:`recover` on every segment before
reading it. Recovery keeps every intact record, including those after a
damaged region (it resynchronises on the next RECORD_MAGIC whose record
verifies), moves the damage to a quarantine file ``<segment>.bad`` that we
never delete, and rewrites the segment atomically. It never refuses a file:
rsyslog and Vector users lost whole queues, or got crash loops, because one
damaged spool file stopped the daemon.

Everything here is synchronous; the spool calls it through
``trio.to_thread.run_sync`` or directly for small writes. OS errors (ENOSPC,
EIO) propagate as OSError for the spool to handle; damaged content raises
ParseError from :func:`read_records` and nothing from :func:`recover`.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import os
from pathlib import Path
from types import TracebackType

from relay.errors import ParseError
from relay.message import Batch
from relay.spool.record import (
    FRAME_HEADER_SIZE,
    RECORD_MAGIC,
    decode_record,
    frame_header,
    unframe,
    validate_record,
)

SEGMENT_HEADER = b"RLYSEG1\n"
SEGMENT_SUFFIX = ".seg"
FIRST_RECORD = len(SEGMENT_HEADER)  # offset of the first record in a segment

# read_records reads at least this much in one go: fewer, larger reads; a
# spool page is typically a few hundred KiB anyway.
MIN_READ = 64 * 1024

_ID_DIGITS = 16  # <id:016d>


def segment_path(directory: Path, seg_id: int) -> Path:
    """The path of segment ``seg_id`` in ``directory``."""
    if seg_id < 0:
        raise ValueError("segment ids are non-negative")
    return directory / f"{seg_id:0{_ID_DIGITS}d}{SEGMENT_SUFFIX}"


def quarantine_path(path: Path) -> Path:
    """Where :func:`recover` puts the damaged bytes of segment ``path``."""
    return path.with_name(path.name + ".bad")


def list_segments(directory: Path) -> list[int]:
    """The ids of the segments in ``directory``, ascending.

    Only regular files with canonical names count (``0000000000000042.seg``):
    ``.tmp`` and ``.bad`` files and anything else left there are ignored.
    """
    ids = []
    with os.scandir(directory) as entries:
        for entry in entries:
            stem, dot, suffix = entry.name.partition(".")
            canonical = len(stem) == _ID_DIGITS and stem.isascii() and stem.isdigit()
            if canonical and dot + suffix == SEGMENT_SUFFIX and entry.is_file():
                ids.append(int(stem))
    return sorted(ids)


def fsync_directory(directory: Path) -> None:
    """Make the names in ``directory`` (created, renamed) survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (regular files rarely write short)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # never for a regular file; do not spin if it happens
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


# fdatasync flushes the data and the size change, which is all a reader needs
# (the mtime can stay in the page cache); macOS has only fsync.
_datasync = getattr(os, "fdatasync", os.fsync)


class SegmentWriter:
    """The open, append-only end of one segment.

    Not thread-safe: one writer per segment, used by one task or thread at a
    time. Use :meth:`create`; the constructor takes an already open fd.
    """

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._size = size
        self._broken = False  # a failed append could not be undone

    @classmethod
    def create(cls, directory: Path, seg_id: int) -> SegmentWriter:
        """Create segment ``seg_id`` in ``directory`` and write its header.

        Fails with FileExistsError if the segment exists: a new segment never
        overwrites an old one, whatever the spool's metadata says (rsyslog
        overwrote queue files when it lost its ``.qi``). The header and the
        name are fsynced, so after a crash the segment exists and is valid.
        """
        path = segment_path(directory, seg_id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)  # spooled logs are as private as the logs
        try:
            _write_all(fd, SEGMENT_HEADER)
            os.fsync(fd)
            fsync_directory(directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return cls(path, fd, len(SEGMENT_HEADER))

    @property
    def size(self) -> int:
        """Bytes in the segment, header included: the end of the last record."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._fd is None

    def append(self, payloads: list[bytes]) -> list[int]:
        """Append one record per payload; return the end offset of each.

        All records go out in one ``os.write`` (more only if the kernel writes
        short). If the write fails (ENOSPC, EIO) the segment is truncated back
        to where it was, so it never keeps half a batch, and the OSError
        propagates; if even that fails, the writer refuses further appends
        (the spool should close it and start a new segment).
        """
        fd = self._require_open()
        if self._broken:
            raise OSError(errno.EIO, f"{self.path}: unusable after a failed write")
        if not payloads:
            return []
        parts: list[bytes] = []
        ends: list[int] = []
        end = self._size
        for payload in payloads:
            parts.append(frame_header(payload))
            parts.append(payload)
            end += FRAME_HEADER_SIZE + len(payload)
            ends.append(end)
        try:
            _write_all(fd, b"".join(parts))
        except OSError:
            try:
                os.ftruncate(fd, self._size)
            except OSError:
                self._broken = True
            raise
        self._size = end
        return ends

    def fsync(self) -> None:
        """Make every appended record durable."""
        _datasync(self._require_open())

    def close(self) -> None:
        """Close the file (without fsync; call :meth:`fsync` first if that matters)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path}: segment writer is closed")
        return self._fd


def read_records(path: Path, offset: int, max_bytes: int) -> tuple[list[tuple[Batch, int]], int]:
    """Read the records from ``offset`` on, about ``max_bytes`` of them.

    ``offset`` is the start of a record (FIRST_RECORD for the first one, then
    an end offset returned before). Returns ``(batch, end_offset)`` pairs and
    the offset after the last one: at least one record if there is a whole
    one, and no more once ``max_bytes`` would be exceeded. A partial record at
    the end of the file (a torn tail, or a write in progress) ends the read
    cleanly; returns ``([], offset)`` at the end.

    Expects a recovered segment (see :func:`recover`): damage raises
    ParseError, and the spool quarantines the segment.

    The same as :func:`read_frames` then :func:`decode_frames`; a caller that
    reads in a worker thread calls those two apart (see decode_frames).
    """
    buffer, spans = read_frames(path, offset, max_bytes)
    return decode_frames(path, offset, buffer, spans)


def read_frames(path: Path, offset: int, max_bytes: int) -> tuple[bytes, list[tuple[int, int]]]:
    """The blocking half of :func:`read_records`: read and check the frames.

    Returns the bytes read from ``offset`` and the ``(payload_start, end)``
    span in them of each whole record whose frame (magic, length, CRC) is
    intact, as :func:`read_records` would take them. Raises ParseError only
    when the first record's frame is damaged.
    """
    if offset < FIRST_RECORD:
        raise ValueError(f"offset {offset} is inside the segment header")
    spans: list[tuple[int, int]] = []
    with open(path, "rb", buffering=0) as file:
        file.seek(offset)
        buffer = file.read(max(max_bytes, MIN_READ))
        pos = 0
        while pos < len(buffer) or not spans:
            try:
                span = unframe(buffer, pos)
            except ParseError as e:
                if spans:
                    break  # deliver what is whole; the next call raises here
                raise ParseError(f"{path} at offset {offset + pos}: {e}") from None
            if span is None:
                if spans:
                    break  # the rest is beyond max_bytes, or a tail; next call
                # The first record is longer than what was read: read the
                # rest, unless the file ends first (a torn tail, or the end).
                more = _remaining_length(buffer, pos)
                if offset + len(buffer) + more > os.fstat(file.fileno()).st_size:
                    break
                buffer += file.read(more)
                continue
            if spans and span[1] > max_bytes:
                break
            spans.append(span)
            pos = span[1]
    return buffer, spans


def decode_frames(
    path: Path, offset: int, buffer: bytes, spans: list[tuple[int, int]]
) -> tuple[list[tuple[Batch, int]], int]:
    """The batches in what :func:`read_frames` returned, as :func:`read_records`.

    This half makes the objects that stay queued (one bytes per message): the
    spool calls it on its own thread, so that they come from the allocator
    arena where the batches it frees return their memory. Made in a worker
    thread, they would come from that thread's arena (glibc), and RSS would
    grow past the memory budget while the main arena held free space (measured:
    +25 MiB over a 256 MiB budget, refilling after a UDP flood).
    """
    records: list[tuple[Batch, int]] = []
    pos = 0
    for payload_start, end in spans:
        try:
            batch = decode_record(buffer, payload_start, end)
        except ParseError as e:
            if records:
                break
            raise ParseError(f"{path} at offset {offset + pos}: {e}") from None
        records.append((batch, offset + end))
        pos = end
    return records, offset + pos


def _remaining_length(buffer: bytes, pos: int) -> int:
    """How many more bytes the (incomplete) record at ``pos`` needs."""
    have = len(buffer) - pos
    if have < FRAME_HEADER_SIZE:
        return FRAME_HEADER_SIZE - have
    length = int.from_bytes(buffer[pos + 4 : pos + 8], "little")
    return FRAME_HEADER_SIZE + length - have


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :func:`recover` found in one segment.

    ``damaged_records`` is an estimate: the number of RECORD_MAGIC occurrences
    inside the damaged regions, at least one per region. ``quarantine`` is the
    ``.bad`` file the damaged bytes were appended to, or None if there were
    none. ``rewritten`` says whether the segment was replaced (damage cut out,
    or a missing header restored): then records may have moved, and
    :meth:`translate` maps an offset stored before. ``moved`` holds
    ``(old_offset, new_offset)`` for the start of each kept record, then for
    the end of the file (empty when not rewritten).
    """

    intact_records: int
    intact_messages: int
    damaged_regions: int
    damaged_records: int
    damaged_bytes: int
    quarantine: Path | None
    rewritten: bool = False
    moved: tuple[tuple[int, int], ...] = ()

    def translate(self, old_offset: int) -> int:
        """Where reading resumes in the recovered segment, for an offset saved before.

        ``old_offset`` is a record boundary in the segment as it was (a read
        or ack position the spool stored); the result is the start of the
        first kept record at or after it in the recovered segment, or its end
        if there is none. Records before it stay skipped and damaged ones are
        gone, so the rewrite makes nothing be delivered twice.
        """
        if not self.rewritten:
            return old_offset
        # moved ends with (old end of file, new end of file), so an offset
        # past the last kept record maps to the new end.
        i = bisect.bisect_left(self.moved, (old_offset, -1))
        return self.moved[min(i, len(self.moved) - 1)][1]


def recover(path: Path) -> RecoveryReport:
    """Verify segment ``path`` after an unclean stop; quarantine what is damaged.

    Every record is checked (magic, length, CRC, payload decodes). Damaged
    regions (bytes outside any intact record, a torn tail included, and the
    header if it is wrong) are appended to ``<path>.bad`` and cut out: the
    intact records are written to ``<path>.tmp``, fsynced and renamed over the
    segment. An undamaged segment is left untouched. Raises only OSError.
    """
    data = path.read_bytes()  # segments are bounded by the spool's segment size
    header_ok = data.startswith(SEGMENT_HEADER)
    # A flipped header must not lose the records: scan from 0, so that the
    # header bytes become (the start of) a damaged region like any other.
    spans, intact_messages, damaged = _scan(data, FIRST_RECORD if header_ok else 0)
    damaged_bytes = sum(end - start for start, end in damaged)
    damaged_records = sum(max(1, data.count(RECORD_MAGIC, s, e)) for s, e in damaged)
    if header_ok and not damaged:
        return RecoveryReport(len(spans), intact_messages, 0, 0, 0, None)

    quarantine = None
    if damaged:
        quarantine = quarantine_path(path)
        _quarantine(data, damaged, path, quarantine)
    moved = _rewrite(path, data, spans)
    return RecoveryReport(
        intact_records=len(spans),
        intact_messages=intact_messages,
        damaged_regions=len(damaged),
        damaged_records=damaged_records,
        damaged_bytes=damaged_bytes,
        quarantine=quarantine,
        rewritten=True,
        moved=moved,
    )


def _scan(data: bytes, pos: int) -> tuple[list[tuple[int, int]], int, list[tuple[int, int]]]:
    """The intact record spans of ``data`` from ``pos``, their messages, the damaged regions."""
    spans: list[tuple[int, int]] = []
    messages = 0
    damaged: list[tuple[int, int]] = []
    damage_start: int | None = None
    while pos < len(data):
        verified = _verify(data, pos)
        if verified is not None:
            if damage_start is not None:
                damaged.append((damage_start, pos))
                damage_start = None
            end, count = verified
            spans.append((pos, end))
            messages += count
            pos = end
            continue
        if damage_start is None:
            damage_start = pos
        # Resynchronise: the next record can only start at a magic.
        found = data.find(RECORD_MAGIC, pos + 1)
        pos = len(data) if found < 0 else found
    if damage_start is not None:
        damaged.append((damage_start, len(data)))
    return spans, messages, damaged


def _verify(data: bytes, pos: int) -> tuple[int, int] | None:
    """``(end, message count)`` of the record at ``pos`` if it is intact, else None."""
    try:
        span = unframe(data, pos)
        if span is None:
            return None  # a torn tail
        count = validate_record(data, *span)
    except ParseError:
        return None
    return span[1], count


def _quarantine(data: bytes, damaged: list[tuple[int, int]], path: Path, bad: Path) -> None:
    """Append each damaged region to ``bad``, behind a line saying where it was."""
    created = not bad.exists()
    with open(bad, "ab") as file:
        for start, end in damaged:
            # One text line per region, so an admin (or a future fsck tool)
            # can tell regions and recoveries apart in the raw bytes.
            line = f"relay-quarantine {path.name} offset={start} length={end - start}\n"
            file.write(line.encode())
            file.write(memoryview(data)[start:end])
        file.flush()
        os.fsync(file.fileno())
    if created:
        # The quarantined bytes must be durable before the segment loses them.
        fsync_directory(path.parent)


def _rewrite(path: Path, data: bytes, spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Replace ``path`` atomically by its header and ``spans``; return the moves."""
    tmp = path.with_name(path.name + ".tmp")
    view = memoryview(data)
    moved: list[tuple[int, int]] = []
    new = FIRST_RECORD
    with open(tmp, "wb") as file:  # a stale .tmp from a crashed recovery is overwritten
        file.write(SEGMENT_HEADER)
        for start, end in spans:
            file.write(view[start:end])
            moved.append((start, new))
            new += end - start
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)
    # A final pair (old end, new end): translate() maps offsets past the last
    # kept record to the new end of the file.
    moved.append((len(data), new))
    return tuple(moved)
