"""relay/spool/record.py: the payload codec and the on-disk frame."""

from __future__ import annotations

import math
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import ParseError
from relay.message import Batch
from relay.protocol.framing import encode_octet_counted
from relay.spool.record import (
    FRAME_HEADER_SIZE,
    MAX_RECORD,
    MIN_PAYLOAD,
    RECORD_MAGIC,
    decode_record,
    encode_record,
    frame,
    frame_header,
    unframe,
    validate_record,
)
from tests.branches import Branches

# Names as the relay sees them: any text without lone surrogates, and any
# bytes decoded the way the OS hands over socket paths (surrogateescape).
names = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.binary(max_size=40).map(
    lambda b: b.decode("utf-8", "surrogateescape")
)
batches = st.builds(
    lambda messages, received, peer, name: Batch(
        messages, received=received, peer=peer, input=name
    ),
    st.lists(st.binary(max_size=300), max_size=50),  # NUL, LF, invalid UTF-8, empty
    st.floats(),
    names,
    names,
)


def same(a: Batch, b: Batch) -> bool:
    received_a = struct.pack("<d", a.received)  # bitwise, so that NaN equals itself
    received_b = struct.pack("<d", b.received)
    return (a.messages, received_a, a.peer, a.input, a.nbytes) == (
        b.messages,
        received_b,
        b.peer,
        b.input,
        b.nbytes,
    )


@given(batches)
def test_round_trip(batch: Batch) -> None:
    payload = encode_record(batch)
    decoded = decode_record(payload)
    assert same(decoded, batch)
    assert validate_record(payload) == len(batch)
    assert all(type(m) is bytes for m in decoded.messages)


@given(batches, st.binary(max_size=20), st.binary(max_size=20))
def test_decode_inside_a_larger_buffer(batch: Batch, before: bytes, after: bytes) -> None:
    payload = encode_record(batch)
    buffer = before + payload + after
    assert same(decode_record(buffer, len(before), len(before) + len(payload)), batch)


def test_layout_is_the_documented_one() -> None:
    batch = Batch([b"<13>a\n", b"", b"\x00\xff"], received=1.5, peer="10.0.0.1:514", input="tcp")
    expected = (
        struct.pack("<BdHHI", 1, 1.5, 12, 3, 3)
        + b"10.0.0.1:514"
        + b"tcp"
        + struct.pack("<3I", 6, 0, 2)
        + b"<13>a\n\x00\xff"
    )
    assert encode_record(batch) == expected
    length = struct.pack("<I", len(expected))
    crc = zlib.crc32(length + expected)
    assert frame(expected) == RECORD_MAGIC + length + struct.pack("<I", crc) + expected


def test_encoding_octet_counted_frames_keeps_them_one_buffer() -> None:
    # A batch read octet-counted keeps its frames as one buffer; writing it to
    # disk (at a stop, all of memory) must not leave its messages sliced out
    # too: that doubles what it takes, past queue_max_bytes.
    messages = [b"<13>1 - h a - - - seq=%d" % i for i in range(100)]
    wire = encode_octet_counted(messages)
    batch = Batch(None, received=1.5, octet_counted=wire, nbytes=sum(map(len, messages)), count=100)
    size = batch.memory_size()
    assert same(decode_record(encode_record(batch)), Batch(messages, received=1.5))
    assert batch.memory_size() == size


def test_empty_batch() -> None:
    batch = decode_record(encode_record(Batch([], received=0.0)))
    assert batch.messages == [] and batch.nbytes == 0
    assert len(encode_record(Batch([], received=0.0))) == MIN_PAYLOAD


def test_received_keeps_microseconds() -> None:
    received = 1_767_225_600.123456
    assert decode_record(encode_record(Batch([b"x"], received=received))).received == received
    infinite = decode_record(encode_record(Batch([b"x"], received=math.inf))).received
    assert infinite == math.inf


@given(batches, st.data())
def test_every_truncation_is_a_parse_error(batch: Batch, data: st.DataObject) -> None:
    payload = encode_record(batch)
    cut = data.draw(st.integers(0, len(payload) - 1))
    assert agree(payload[:cut]) is None
    assert agree(payload + b"\x00") is None  # trailing bytes are not silently ignored


@given(st.binary(max_size=200))
def test_garbage_raises_parse_error_only(garbage: bytes) -> None:
    agree(garbage)


def agree(payload: bytes) -> Batch | None:
    """Decode ``payload``; validate_record must accept and reject the same payloads."""
    try:
        batch = decode_record(payload)
    except ParseError:
        with pytest.raises(ParseError):
            validate_record(payload)
        return None
    assert validate_record(payload) == len(batch)
    return batch


@st.composite
def after_a_valid_header(draw: st.DrawFn) -> tuple[int, bytes, str]:
    """A message count and the bytes after a payload header with a 3-byte peer
    and no input name: well-formed, or cut, extended, under a wrong count, or
    garbage; with which of these it is."""
    messages = draw(st.lists(st.binary(max_size=20), max_size=5))
    lengths = struct.pack(f"<{len(messages)}I", *map(len, messages))
    tail = draw(st.binary(min_size=3, max_size=3)) + lengths + b"".join(messages)
    count = len(messages)
    shape = draw(st.sampled_from(["whole", "cut", "extended", "wrong count", "garbage"]))
    if shape == "cut":
        tail = tail[: draw(st.integers(0, len(tail) - 1))]
    elif shape == "extended":
        tail += draw(st.binary(min_size=1, max_size=8))
    elif shape == "wrong count":
        count = draw(st.integers(0, 2**32 - 1).filter(lambda c: c != len(messages)))
    elif shape == "garbage":
        count, tail = draw(st.integers(0, 2**32 - 1)), draw(st.binary(max_size=60))
    return count, tail, shape


def test_garbage_with_a_valid_header() -> None:
    branches = Branches("decoded", "rejected")

    @given(after_a_valid_header())
    def check(case: tuple[int, bytes, str]) -> None:
        count, tail, shape = case
        payload = struct.pack("<BdHHI", 1, 0.0, 3, 0, count) + tail
        batch = agree(payload)
        if shape == "whole":
            assert batch is not None and batch.peer.encode("utf-8", "surrogateescape") == tail[:3]
        elif shape in ("cut", "extended"):
            assert batch is None
        if batch is not None:
            branches.reach("decoded")
            assert sum(map(len, batch.messages)) + 3 + 4 * len(batch.messages) == len(tail)
            assert tail.endswith(b"".join(batch.messages))
        else:
            branches.reach("rejected")

    check()
    branches.assert_all_reached()


def test_wrong_version() -> None:
    payload = bytearray(encode_record(Batch([b"x"], received=0.0)))
    payload[0] = 2
    with pytest.raises(ParseError, match="version"):
        decode_record(bytes(payload))


def test_bad_bounds() -> None:
    payload = encode_record(Batch([b"x"], received=0.0))
    with pytest.raises(ParseError):
        decode_record(payload, 0, len(payload) + 1)
    with pytest.raises(ParseError):
        decode_record(payload, 5, 4)


def test_names_too_long_or_unencodable() -> None:
    with pytest.raises(ValueError, match="65,535"):
        encode_record(Batch([b"x"], received=0.0, peer="p" * 65_536))
    encode_record(Batch([b"x"], received=0.0, input="i" * 65_535))
    with pytest.raises(ValueError):  # a lone surrogate no OS would hand us
        encode_record(Batch([b"x"], received=0.0, peer="\ud800"))


@given(batches)
def test_unframe(batch: Batch) -> None:
    payload = encode_record(batch)
    record = b"junk" + frame(payload)
    assert unframe(record, 4) == (4 + FRAME_HEADER_SIZE, len(record))
    for cut in range(4, len(record)):
        assert unframe(record[:cut], 4) is None  # torn: not an error, not a record


def test_unframe_damage() -> None:
    record = bytearray(frame(encode_record(Batch([b"hello"], received=0.0))))
    for i in range(len(record)):
        damaged = bytearray(record)
        damaged[i] ^= 0x10
        try:
            span = unframe(bytes(damaged))
        except ParseError:
            continue
        # Only a length flipped upwards passes: it reads as a record not yet
        # all there, which a reader treats as a torn tail (and recover() as damage).
        assert span is None and 4 <= i < 8
    with pytest.raises(ParseError, match="magic"):
        unframe(b"\xd5RLx")  # a partial header that is not a partial magic
    assert unframe(b"\xd5RL") is None


def test_length_limits() -> None:
    too_long = RECORD_MAGIC + struct.pack("<II", MAX_RECORD + 1, 0)
    with pytest.raises(ParseError, match="out of range"):
        unframe(too_long)
    too_short = RECORD_MAGIC + struct.pack("<II", MIN_PAYLOAD - 1, 0) + b"\x00" * 20
    with pytest.raises(ParseError, match="out of range"):
        unframe(too_short)
    assert frame_header(b"x" * MIN_PAYLOAD)[:4] == RECORD_MAGIC
