"""relay/message.py: batches on the hot path, lazy per-message views."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from relay.message import (
    BATCH_OVERHEAD,
    MESSAGE_OVERHEAD,
    Batch,
    Message,
    format_received,
    octet_counted_wire,
)
from relay.protocol.framing import encode_octet_counted
from relay.protocol.syslog import Facility, Severity


def test_batch_forwards_received_wire_bytes_unchanged() -> None:
    wire = b"5 <13>a"
    batch = Batch([b"<13>a"], received=0.0, octet_counted=wire)
    assert batch.octet_counted() is wire


def test_batch_encodes_without_keeping_a_copy_when_no_wire_bytes() -> None:
    # A batch may wait in a spool for hours: a cached second copy of its bytes
    # would not be counted in queue_max_bytes.
    batch = Batch([b"<13>a", b"<14>bc"], received=0.0)
    assert batch.octet_counted() == b"5 <13>a6 <14>bc"
    assert batch.octet_counted() is not batch.octet_counted()
    assert batch.nbytes == 11


def test_batches_are_written_as_each_batch_frames_them() -> None:
    """A write of several batches (some with the frames as received, some
    encoded anew) is their frames, in order, in one buffer."""
    received = Batch(None, received=0.0, octet_counted=b"3 <1>4 <2>x", nbytes=7, count=2)
    lines = Batch([b"<13>a", b"<14>" + b"b" * 120], received=0.0)
    batches = [lines, received, lines, received]
    wire = octet_counted_wire(batches)
    assert wire == b"".join(batch.octet_counted() for batch in batches)
    assert wire.startswith(b"5 <13>a124 <14>bbb")
    assert octet_counted_wire([received]) is received.octet_counted()


@pytest.mark.parametrize("size", [20, 90, 300, 2000])
@pytest.mark.parametrize("count", [1, 3, 1000])
def test_memory_size_covers_what_a_batch_takes(size: int, count: int) -> None:
    # What the spool's memory budget counts: at least what the objects take
    # (tracemalloc sees them without the allocator's rounding, so a little
    # less than RSS does), and not so much more that the budget goes unused.
    pad = b"x" * (size - 11)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        batch = Batch([b"<13>%07d" % i + pad for i in range(count)], received=time.time())
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert batch.nbytes == size * count
    # (BATCH_OVERHEAD also covers the spool's entry for the batch, not made here.)
    assert taken <= batch.memory_size() <= 1.25 * taken + BATCH_OVERHEAD


def test_memory_size_of_octet_counted_frames_is_their_buffer() -> None:
    wire = encode_octet_counted([b"<13>a" * 20] * 100)
    batch = Batch(None, received=0.0, octet_counted=wire, nbytes=10_000, count=100)
    assert batch.memory_size() == len(wire) + BATCH_OVERHEAD
    batch.messages  # noqa: B018  (a filter or file output slices them out)
    assert batch.memory_size() == len(wire) + BATCH_OVERHEAD + 10_000 + 100 * MESSAGE_OVERHEAD


def test_split_keeps_metadata() -> None:
    batch = Batch([b"a", b"b", b"c"], received=1.5, peer="10.0.0.1:514", input="lan")
    head, tail = batch.split(1)
    assert (head.messages, tail.messages) == ([b"a"], [b"b", b"c"])
    assert (tail.received, tail.peer, tail.input) == (1.5, "10.0.0.1:514", "lan")


def test_message_parses_only_when_asked() -> None:
    message = Message(b"<165>1 2003-10-11T22:14:15.003Z host app - ID47 - hi", received=0.0)
    assert message._parsed is None
    assert message.pri == 165
    assert message._parsed is None  # PRI alone does not parse the rest
    parsed = message.parsed()
    assert (parsed.facility, parsed.severity) == (Facility.local4, Severity.notice)
    assert parsed.hostname == "host" and parsed.msg == b"hi"
    assert message.parsed() is parsed


def test_message_without_pri() -> None:
    assert Message(b"no pri", received=0.0).pri is None


def test_format_received_has_microseconds() -> None:
    assert format_received(1_700_000_000.123456) == "2023-11-14T22:13:20.123456Z"


def test_bsd_timestamp_year_comes_from_the_receive_time() -> None:
    """A message received in June 2020 and parsed now (say, replayed from an
    old spool) is from 2020, whatever today's date."""
    received = 1_591_012_800.0  # 2020-06-01T12:00:00Z
    message = Message(b"<13>Jun  1 11:59:59 host app: old", received=received)
    timestamp = message.parsed().timestamp
    assert timestamp is not None and timestamp.year == 2020


def test_batch_from_octet_counted_frames_slices_messages_when_asked() -> None:
    wire = encode_octet_counted([b"<13>a", b"<14>bc"])
    batch = Batch(None, received=1.5, octet_counted=wire, nbytes=11, count=2)
    assert (len(batch), batch.nbytes, batch.octet_counted()) == (2, 11, wire)
    assert batch.messages == [b"<13>a", b"<14>bc"]
    assert [m.pri for m in batch] == [13, 14]
    head, tail = batch.split(1)
    assert (head.messages, tail.octet_counted()) == ([b"<13>a"], b"6 <14>bc")
    with pytest.raises(ValueError, match="needs octet_counted"):
        Batch(None, received=1.5, nbytes=11, count=2)
