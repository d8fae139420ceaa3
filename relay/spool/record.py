"""The spool's on-disk record: one :class:`~relay.message.Batch` per record.

A pure codec: bytes in, values out; no file I/O, no trio. ``segment.py`` does
the file I/O on top of it.

A record on disk is a frame around a payload::

    magic      4 bytes   RECORD_MAGIC, where a resynchronising reader looks
    length     uint32    payload length (little-endian)
    crc        uint32    zlib.crc32 of the 4 length bytes + the payload
    payload    length bytes

The CRC covers the length so that a flipped length bit is caught as damage,
never read as a shorter or longer record. The payload is::

    version    uint8     PAYLOAD_VERSION
    received   float64   receive time, seconds since the epoch
    peer_len   uint16    bytes of peer
    input_len  uint16    bytes of input
    count      uint32    number of messages
    peer       UTF-8 (surrogateescape), then input, the same
    lengths    count x uint32 (little-endian), the length of each message
    messages   all message bytes, concatenated

The lengths come first and the messages as one block, so that encoding is one
``b"".join`` and decoding is one array read plus a slice per message: no
per-message struct call on the hot path (the spool writes thousands of
records per second).
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from itertools import accumulate, pairwise

from relay.errors import ParseError
from relay.message import Batch

RECORD_MAGIC = b"\xd5RLY"
"""Starts every record. The high first byte makes it unlikely in text logs."""

PAYLOAD_VERSION = 1

FRAME_HEADER = struct.Struct("<4sII")  # magic, payload length, crc32
FRAME_HEADER_SIZE = FRAME_HEADER.size  # 12
_LENGTH = struct.Struct("<I")

PAYLOAD_HEADER = struct.Struct("<BdHHI")  # version, received, peer, input, count
MIN_PAYLOAD = PAYLOAD_HEADER.size  # 17: a record with no peer, input or messages

# The spool stores one batch per record, and a batch is what an input read in
# one go (64-256 KiB of frames) or what the memory part spilled: a few MiB at
# most, 1,000 messages of 64 KiB (a generous maximum message size) is 64 MiB.
# A length above this in a frame is damage, not a record; it also bounds what
# a reader allocates for one record.
MAX_RECORD = 256 * 1024 * 1024

_MAX_NAME = 0xFFFF  # peer and input lengths are uint16

# array("I") is 4 bytes on every platform CPython supports, but the format is
# defined as uint32, so check instead of assuming.
_U32 = "I" if array("I").itemsize == 4 else "L"
if array(_U32).itemsize != 4:
    raise ImportError("relay.spool.record needs a 4-byte unsigned array type")
_SWAP = sys.byteorder == "big"  # the lengths are stored little-endian


def encode_record(batch: Batch) -> bytes:
    """The payload of one record holding ``batch``.

    Raises ValueError when the batch cannot be a record: a peer or input name
    longer than 65,535 bytes, a message of 4 GiB or more, or a payload above
    MAX_RECORD.
    """
    peer = batch.peer.encode("utf-8", "surrogateescape")
    name = batch.input.encode("utf-8", "surrogateescape")
    if len(peer) > _MAX_NAME or len(name) > _MAX_NAME:
        raise ValueError("peer or input name longer than 65,535 bytes")
    messages = batch.sliced()  # an octet-counted batch keeps only its frames
    try:
        lengths = array(_U32, map(len, messages))
    except OverflowError:
        raise ValueError("a message of 4 GiB or more cannot be spooled") from None
    if _SWAP:
        lengths.byteswap()
    header = PAYLOAD_HEADER.pack(
        PAYLOAD_VERSION, batch.received, len(peer), len(name), len(lengths)
    )
    # One join for everything: concatenating the large parts pairwise would
    # copy the messages twice.
    parts = [header, peer, name, lengths.tobytes()]
    parts += messages
    payload = b"".join(parts)
    if len(payload) > MAX_RECORD:
        raise ValueError(f"batch of {len(payload)} bytes is above MAX_RECORD")
    return payload


def decode_record(payload: bytes, start: int = 0, end: int | None = None) -> Batch:
    """The batch in ``payload[start:end]`` (default: all of it).

    ``start``/``end`` let a reader decode a record inside a larger buffer
    without copying the payload out first. Raises ParseError if the bytes are
    not a well-formed payload: a wrong version, names or lengths running past
    the end, or message lengths that do not add up to exactly what is left.
    """
    end, peer_at, names_end, lengths = _parse_head(payload, start, end)
    lengths_end = names_end + 4 * len(lengths)
    offsets = list(accumulate(lengths, initial=lengths_end))
    if offsets[-1] != end:
        raise ParseError("message lengths do not add up to the record payload")
    received, peer_len = _HEAD_FIELDS.unpack_from(payload, start + 1)
    # Decoding with surrogateescape cannot fail: any bytes round-trip.
    peer = payload[peer_at : peer_at + peer_len].decode("utf-8", "surrogateescape")
    name = payload[peer_at + peer_len : names_end].decode("utf-8", "surrogateescape")
    messages = [payload[a:b] for a, b in pairwise(offsets)]
    return Batch(messages, received=received, peer=peer, input=name, nbytes=end - lengths_end)


def validate_record(payload: bytes, start: int = 0, end: int | None = None) -> int:
    """The number of messages in the payload ``payload[start:end]``.

    Checks exactly what :func:`decode_record` checks, raising ParseError, but
    builds no messages: crash recovery verifies whole segments with it.
    """
    end, _, names_end, lengths = _parse_head(payload, start, end)
    if names_end + 4 * len(lengths) + sum(lengths) != end:
        raise ParseError("message lengths do not add up to the record payload")
    return len(lengths)


_HEAD_FIELDS = struct.Struct("<dH")  # received and peer length, after the version


def _parse_head(payload: bytes, start: int, end: int | None) -> tuple[int, int, int, array[int]]:
    """``(end, peer offset, end of names, message lengths)``, with their bounds checked."""
    if end is None:
        end = len(payload)
    if not 0 <= start <= end <= len(payload):
        raise ParseError("record payload bounds outside the buffer")
    if end - start < MIN_PAYLOAD:
        raise ParseError(f"record payload of {end - start} bytes is shorter than its header")
    version, _, peer_len, input_len, count = PAYLOAD_HEADER.unpack_from(payload, start)
    if version != PAYLOAD_VERSION:
        raise ParseError(f"unknown record payload version {version}")
    peer_at = start + MIN_PAYLOAD
    names_end = peer_at + peer_len + input_len
    lengths_end = names_end + 4 * count
    if lengths_end > end:
        raise ParseError("record payload shorter than its names and lengths")
    lengths = array(_U32)
    lengths.frombytes(memoryview(payload)[names_end:lengths_end])
    if _SWAP:
        lengths.byteswap()
    return end, peer_at, names_end, lengths


def frame_header(payload: bytes) -> bytes:
    """The 12 bytes that go before ``payload`` on disk: magic, length, CRC.

    Separate from :func:`frame` so that a writer can join many headers and
    payloads into one buffer without copying each payload twice.
    """
    if len(payload) > MAX_RECORD:
        raise ValueError(f"record of {len(payload)} bytes is above MAX_RECORD")
    length = _LENGTH.pack(len(payload))
    return RECORD_MAGIC + length + _LENGTH.pack(zlib.crc32(payload, zlib.crc32(length)))


def frame(payload: bytes) -> bytes:
    """``payload`` framed for disk: RECORD_MAGIC, length, CRC, payload."""
    return frame_header(payload) + payload


def unframe(buffer: bytes, start: int = 0) -> tuple[int, int] | None:
    """The payload span ``(payload_start, record_end)`` of the record framed at ``start``.

    Returns None when ``buffer`` ends before the record does (a torn tail, or
    a reader that has not read far enough). Raises ParseError when the frame
    is damaged: no magic, a length outside MIN_PAYLOAD..MAX_RECORD, or a CRC
    that does not match. The payload itself is not decoded here.
    """
    if len(buffer) - start < FRAME_HEADER_SIZE:
        tail = buffer[start : start + len(RECORD_MAGIC)]
        if not RECORD_MAGIC.startswith(tail):
            raise ParseError("no record magic")
        return None
    magic, length, crc = FRAME_HEADER.unpack_from(buffer, start)
    if magic != RECORD_MAGIC:
        raise ParseError("no record magic")
    if not MIN_PAYLOAD <= length <= MAX_RECORD:
        raise ParseError(f"record length {length} out of range")
    payload_start = start + FRAME_HEADER_SIZE
    end = payload_start + length
    if end > len(buffer):
        return None
    # Memoryviews: the CRC reads the record where it lies, without a copy.
    view = memoryview(buffer)
    if zlib.crc32(view[payload_start:end], zlib.crc32(view[start + 4 : start + 8])) != crc:
        raise ParseError("record CRC mismatch")
    return payload_start, end
