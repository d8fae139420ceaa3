"""relay/spool/segment.py: segment files, paged reads, crash recovery."""

from __future__ import annotations

import bisect
import errno
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ParseError
from relay.message import Batch
from relay.spool.record import FRAME_HEADER_SIZE, RECORD_MAGIC, encode_record, frame
from relay.spool.segment import (
    FIRST_RECORD,
    SEGMENT_HEADER,
    SegmentWriter,
    list_segments,
    quarantine_path,
    read_records,
    recover,
    segment_path,
)

Key = tuple[tuple[bytes, ...], float, str, str]


def key(batch: Batch) -> Key:
    return tuple(batch.messages), batch.received, batch.peer, batch.input


def make_batches(count: int, rng: random.Random) -> list[Batch]:
    """``count`` batches of 1-6 sequence-numbered messages with random bytes."""
    batches = []
    seq = 0
    for i in range(count):
        messages = []
        for _ in range(rng.randint(1, 6)):
            messages.append(b"<13>seq=%d " % seq + rng.randbytes(rng.randint(0, 80)))
            seq += 1
        batches.append(Batch(messages, received=1.7e9 + i, peer=f"10.0.0.{i % 250}:514"))
    return batches


def write_segment(directory: Path, batches: list[Batch], rng: random.Random) -> list[int]:
    """Segment 0 holding ``batches``, appended in random chunks; the record ends."""
    ends: list[int] = []
    with SegmentWriter.create(directory, 0) as writer:
        i = 0
        while i < len(batches):
            n = rng.randint(1, 20)
            ends += writer.append([encode_record(b) for b in batches[i : i + n]])
            i += n
        writer.fsync()
    return ends


def read_all(path: Path, max_bytes: int) -> list[Batch]:
    out: list[Batch] = []
    offset = FIRST_RECORD
    while True:
        records, offset = read_records(path, offset, max_bytes)
        if not records:
            return out
        out += [batch for batch, _ in records]


# -- writer and listing -----------------------------------------------------


def test_writer_appends_framed_records(tmp_path: Path) -> None:
    payloads = [encode_record(Batch([b"a" * n], received=0.0)) for n in (0, 1, 100)]
    with SegmentWriter.create(tmp_path, 7) as writer:
        assert writer.path == tmp_path / "0000000000000007.seg"
        assert writer.size == FIRST_RECORD == len(SEGMENT_HEADER)
        assert writer.append([]) == []
        ends = writer.append(payloads[:2]) + writer.append(payloads[2:])
        writer.fsync()
        assert writer.size == ends[-1]
    assert writer.closed
    writer.close()  # idempotent
    expected = SEGMENT_HEADER + b"".join(map(frame, payloads))
    assert writer.path.read_bytes() == expected
    assert ends == [len(SEGMENT_HEADER + b"".join(map(frame, payloads[: i + 1]))) for i in range(3)]
    with pytest.raises(ValueError, match="closed"):
        writer.append(payloads)


def test_create_never_overwrites(tmp_path: Path) -> None:
    SegmentWriter.create(tmp_path, 1).close()
    with pytest.raises(FileExistsError):
        SegmentWriter.create(tmp_path, 1)
    with pytest.raises(ValueError):
        segment_path(tmp_path, -1)


def test_list_segments(tmp_path: Path) -> None:
    for seg_id in (10, 2, 123456789):
        SegmentWriter.create(tmp_path, seg_id).close()
    for junk in ("1.seg", "0000000000000003.seg.tmp", "0000000000000004.seg.bad", "x.seg"):
        (tmp_path / junk).touch()
    (tmp_path / ("\u0660" * 16 + ".seg")).touch()  # digits, but not ASCII ones
    (tmp_path / "0000000000000005.seg").mkdir()
    assert list_segments(tmp_path) == [2, 10, 123456789]


def test_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = SegmentWriter.create(tmp_path, 0)
    real_write = os.write
    calls = []

    def short_write(fd: int, data: bytes) -> int:
        if fd != writer._fd:
            return real_write(fd, data)
        calls.append(len(data))
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short_write)
    batches = make_batches(5, random.Random(1))
    ends = writer.append([encode_record(b) for b in batches])
    writer.close()
    assert len(calls) > 1
    assert ends[-1] == writer.path.stat().st_size
    assert [key(b) for b in read_all(writer.path, 1)] == [key(b) for b in batches]


@pytest.mark.parametrize("truncate_fails", [False, True])
def test_failed_write_leaves_no_partial_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, truncate_fails: bool
) -> None:
    writer = SegmentWriter.create(tmp_path, 0)
    first = writer.append([encode_record(Batch([b"kept"], received=0.0))])
    real_write, real_truncate = os.write, os.ftruncate

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))  # half a batch, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    def truncate(fd: int, length: int) -> None:
        if truncate_fails:
            raise OSError(errno.EIO, "I/O error")
        real_truncate(fd, length)

    monkeypatch.setattr(os, "write", disk_full)
    monkeypatch.setattr(os, "ftruncate", truncate)
    with pytest.raises(OSError) as info:
        writer.append([encode_record(Batch([b"lost"] * 10, received=0.0))])
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert writer.size == first[-1]
    if truncate_fails:
        with pytest.raises(OSError) as info:
            writer.append([encode_record(Batch([b"x"], received=0.0))])
        assert info.value.errno == errno.EIO
    else:
        assert writer.path.stat().st_size == first[-1]
        writer.append([encode_record(Batch([b"after"], received=0.0))])
        assert [b.messages for b in read_all(writer.path, 1 << 20)] == [[b"kept"], [b"after"]]
    writer.close()


# -- read_records -------------------------------------------------------------


@pytest.mark.parametrize("max_bytes", [0, 1, 300, 4096, 100_000, 1 << 30])
def test_read_records_pages(tmp_path: Path, max_bytes: int) -> None:
    rng = random.Random(max_bytes)
    batches = make_batches(300, rng)
    ends = write_segment(tmp_path, batches, rng)
    path = segment_path(tmp_path, 0)
    offset, got = FIRST_RECORD, []
    while True:
        records, next_offset = read_records(path, offset, max_bytes)
        if not records:
            assert next_offset == offset == ends[-1]
            break
        assert next_offset == records[-1][1]
        assert len(records) == 1 or next_offset - offset <= max_bytes
        if next_offset < ends[-1] and max_bytes > 0:
            # No more than max_bytes, but not fewer records than fit in it.
            following = ends[bisect.bisect_right(ends, next_offset)]
            assert following - offset > max_bytes
        got += records
        offset = next_offset
    assert [key(b) for b, _ in got] == [key(b) for b in batches]
    assert [end for _, end in got] == ends


def test_read_a_record_larger_than_a_read(tmp_path: Path) -> None:
    big = Batch([os.urandom(100_000) for _ in range(3)], received=1.0)
    with SegmentWriter.create(tmp_path, 0) as writer:
        writer.append([encode_record(big), encode_record(Batch([b"small"], received=2.0))])
    records, offset = read_records(writer.path, FIRST_RECORD, 10)
    assert [key(b) for b, _ in records] == [key(big)]
    records, offset = read_records(writer.path, offset, 10)
    assert records[0][0].messages == [b"small"]
    assert read_records(writer.path, offset, 10) == ([], offset)


def test_read_stops_cleanly_at_a_torn_tail(tmp_path: Path) -> None:
    batches = make_batches(3, random.Random(0))
    ends = write_segment(tmp_path, batches, random.Random(0))
    path = segment_path(tmp_path, 0)
    torn = frame(encode_record(Batch([b"torn" * 100], received=0.0)))
    for cut in (1, 4, FRAME_HEADER_SIZE, len(torn) - 1):
        with path.open("r+b") as file:
            file.truncate(ends[-1])
            file.seek(ends[-1])
            file.write(torn[:cut])
        records, offset = read_records(path, FIRST_RECORD, 1 << 20)
        assert [key(b) for b, _ in records] == [key(b) for b in batches]
        assert read_records(path, offset, 1 << 20) == ([], ends[-1])


def test_read_raises_on_damage_after_delivering_what_is_whole(tmp_path: Path) -> None:
    batches = make_batches(5, random.Random(0))
    ends = write_segment(tmp_path, batches, random.Random(0))
    path = segment_path(tmp_path, 0)
    data = bytearray(path.read_bytes())
    data[ends[1] + FRAME_HEADER_SIZE + 20] ^= 1  # inside the third record's payload
    path.write_bytes(data)
    records, offset = read_records(path, FIRST_RECORD, 1 << 20)
    assert len(records) == 2 and offset == ends[1]
    with pytest.raises(ParseError, match="CRC"):
        read_records(path, offset, 1 << 20)
    with pytest.raises(ParseError, match="magic"):
        read_records(path, FIRST_RECORD + 1, 1 << 20)
    with pytest.raises(ValueError):
        read_records(path, 0, 1 << 20)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.builds(
            lambda m, r, p: Batch(m, received=r, peer=p),
            st.lists(st.binary(max_size=100), max_size=10),
            st.floats(allow_nan=False),
            st.text(st.characters(codec="utf-8"), max_size=10),
        ),
        max_size=30,
    ),
    st.integers(0, 3000),
)
def test_round_trip_through_a_segment(batches: list[Batch], max_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        with SegmentWriter.create(Path(directory), 0) as writer:
            writer.append([encode_record(b) for b in batches])
        assert [key(b) for b in read_all(writer.path, max_bytes)] == [key(b) for b in batches]


# -- recover -------------------------------------------------------------------


def test_recover_leaves_an_intact_segment_alone(tmp_path: Path) -> None:
    batches = make_batches(50, random.Random(0))
    write_segment(tmp_path, batches, random.Random(0))
    path = segment_path(tmp_path, 0)
    before, stat = path.read_bytes(), path.stat()
    report = recover(path)
    assert report.intact_records == 50
    assert report.intact_messages == sum(map(len, batches))
    assert (report.damaged_regions, report.damaged_records, report.damaged_bytes) == (0, 0, 0)
    assert report.quarantine is None and not report.rewritten
    assert report.translate(12345) == 12345
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_recover_an_empty_or_torn_new_segment(tmp_path: Path) -> None:
    path = segment_path(tmp_path, 0)
    path.write_bytes(b"")
    report = recover(path)
    assert report.damaged_regions == 0 and report.quarantine is None
    assert path.read_bytes() == SEGMENT_HEADER
    path.write_bytes(SEGMENT_HEADER[:5])
    report = recover(path)
    assert (report.damaged_regions, report.damaged_bytes) == (1, 5)
    assert path.read_bytes() == SEGMENT_HEADER
    assert read_records(path, FIRST_RECORD, 100) == ([], FIRST_RECORD)


def parse_quarantine(bad: Path) -> list[tuple[int, bytes]]:
    """The ``(offset, bytes)`` regions in a ``.bad`` file."""
    data, pos, regions = bad.read_bytes(), 0, []
    while pos < len(data):
        eol = data.index(b"\n", pos)
        fields = dict(f.split("=") for f in data[pos:eol].decode().split()[2:])
        start, length = int(fields["offset"]), int(fields["length"])
        regions.append((start, data[eol + 1 : eol + 1 + length]))
        pos = eol + 1 + length
    return regions


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def flip(data: bytes, rng: random.Random) -> bytes:
    damaged = bytearray(data)
    positions = [rng.randrange(len(data)) for _ in range(rng.randint(1, 8))]
    if rng.random() < 0.3:
        positions[0] = rng.randrange(len(SEGMENT_HEADER))  # the file header too
    for pos in positions:
        damaged[pos] ^= rng.randint(1, 255)
    return bytes(damaged)


def zero_range(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    end = min(len(data), start + rng.randint(1, 3000))
    return data[:start] + bytes(end - start) + data[end:]


def append_garbage(data: bytes, rng: random.Random) -> bytes:
    garbage = rng.randbytes(rng.randint(1, 500))
    if rng.random() < 0.5:  # garbage that starts like a record and claims too much
        garbage = RECORD_MAGIC + (len(garbage) + 1000).to_bytes(4, "little") + garbage
    return data + garbage


DAMAGE: list[Callable[[bytes, random.Random], bytes]] = [
    truncate,
    flip,
    zero_range,
    append_garbage,
]


@pytest.mark.parametrize("seed", range(100))
def test_recover_keeps_every_untouched_record(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    batches = make_batches(200, rng)
    ends = write_segment(tmp_path, batches, rng)
    starts = [FIRST_RECORD, *ends[:-1]]
    path = segment_path(tmp_path, 0)
    original = path.read_bytes()
    damaged = DAMAGE[seed % len(DAMAGE)](original, rng)
    path.write_bytes(damaged)

    # Which records the damage touched, from the bytes that actually changed.
    changed = [i for i in range(min(len(damaged), len(original))) if damaged[i] != original[i]]
    touched = {bisect.bisect_right(ends, pos) for pos in changed if pos >= FIRST_RECORD}
    touched |= {i for i, end in enumerate(ends) if end > len(damaged)}
    kept = [i for i in range(len(batches)) if i not in touched]
    header_intact = damaged[:FIRST_RECORD] == SEGMENT_HEADER
    kept_bytes = sum(ends[i] - starts[i] for i in kept)
    expected_damage = len(damaged) - kept_bytes - (FIRST_RECORD if header_intact else 0)

    report = recover(path)

    assert report.intact_records == len(kept)
    assert report.intact_messages == sum(len(batches[i]) for i in kept)
    assert report.damaged_bytes == expected_damage
    assert (report.damaged_regions >= 1) == (expected_damage > 0)
    assert report.damaged_records >= report.damaged_regions
    if touched:
        assert report.damaged_regions >= 1
    # Every intact record is delivered, in order, and nothing that was not written.
    delivered = read_all(path, rng.choice([1, 5000, 1 << 20]))
    assert [key(b) for b in delivered] == [key(batches[i]) for i in kept]
    assert path.read_bytes() == SEGMENT_HEADER + b"".join(
        original[starts[i] : ends[i]] for i in kept
    )
    # The damaged bytes are in the quarantine file, and only they.
    if expected_damage:
        assert report.quarantine == quarantine_path(path)
        regions = parse_quarantine(report.quarantine)
        assert len(regions) == report.damaged_regions
        assert sum(len(b) for _, b in regions) == expected_damage
        assert all(damaged[start : start + len(b)] == b for start, b in regions)
    else:
        assert report.quarantine is None and not quarantine_path(path).exists()
    # A stored offset maps to the next surviving record.
    new_starts = {}
    position = FIRST_RECORD
    for i in kept:
        new_starts[i] = position
        position += ends[i] - starts[i]
    for i in range(len(batches)):
        following = [new_starts[j] for j in kept if j >= i]
        assert report.translate(starts[i]) == (following[0] if following else position)
    # Recovery is idempotent, and leaves no temporary file behind.
    again = recover(path)
    assert (again.damaged_regions, again.rewritten) == (0, False)
    assert not path.with_name(path.name + ".tmp").exists()


def test_header_flip_loses_nothing(tmp_path: Path) -> None:
    batches = make_batches(20, random.Random(0))
    write_segment(tmp_path, batches, random.Random(0))
    path = segment_path(tmp_path, 0)
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(data)
    report = recover(path)
    assert (report.intact_records, report.damaged_regions, report.damaged_bytes) == (20, 1, 8)
    assert [key(b) for b in read_all(path, 1 << 20)] == [key(b) for b in batches]
    assert parse_quarantine(quarantine_path(path)) == [(0, bytes(data[:8]))]


def test_quarantine_is_appended_not_replaced(tmp_path: Path) -> None:
    path = segment_path(tmp_path, 0)
    path.write_bytes(SEGMENT_HEADER + b"first")
    recover(path)
    path.write_bytes(SEGMENT_HEADER + b"second")
    recover(path)
    assert parse_quarantine(quarantine_path(path)) == [(8, b"first"), (8, b"second")]
