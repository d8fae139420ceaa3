"""What a message from a local socket becomes: rsyslog imuxsock's rules.

A program that logs through syslog(3) or ``logger`` to ``/dev/log`` writes no
HOSTNAME (``<13>Dec  1 13:20:39 tag[123]: text``); the daemon that owns the
socket fills it in. rsyslog's imuxsock (as 8.2302 does it, checked with a
real rsyslogd writing RSYSLOG_TraditionalFileFormat and
RSYSLOG_TraditionalForwardFormat, its default forwarding template):

* the timestamp a sender wrote is replaced by the time of reception
  (imuxsock's ``IgnoreTimestamp``, on by default): a BSD timestamp right
  after PRI (``Mmm dd hh:mm:ss``, the month in any case, and one space after
  it) is skipped; without one nothing is skipped;
* the local host name goes after the timestamp; no word of the message is
  ever read as a HOSTNAME (``<13>Dec  1 13:20:39 otherhost tag: x`` keeps
  ``otherhost`` as its TAG, as rsyslog does);
* nothing else is parsed: an RFC 5424 message (``logger --rfc5424``) keeps its
  header as text after the filled-in one (TAG ``1``), leading spaces stay;
* when what follows has no space (only a TAG, or nothing: an empty
  message), one space is added after it, as the forwarding template's
  ``sp-if-no-1st-sp`` does.

So ``<13>Dec  1 13:20:39 tag[123]: text`` received at 13:22:36 on ``myhost``
becomes ``<13>Dec  1 13:22:36 myhost tag[123]: text``: the bytes rsyslog
forwards, and what a receiver's files then show.

Where relay differs on purpose (junk rsyslog mangles): a message without a
valid PRI gets ``<13>`` (user.notice) in front and keeps every byte (rsyslog
reads it as PRI 0 and loses its first two characters); an RFC 3339 or a
``Mmm dd yyyy hh:mm:ss`` timestamp after PRI is kept as text (rsyslog skips
part of it).

The cost is small per message: a batch of what syslog(3) writes is filled
in by one regular expression over the batch joined (:func:`fill_in`), any
other message by a loop that looks PRI up by its first bytes and tests the
BSD timestamp at fixed offsets; the timestamp and host name are formatted
once per batch (:func:`prefix`).
"""

from __future__ import annotations

import re

from relay.protocol.framing import FrameDecoder, Framing, OversizePolicy

__all__ = ["StreamDecoder", "annotation", "bsd_timestamp", "fill_in", "prefix"]

_MONTHS = (
    *(b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun"),
    *(b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"),
)
# rsyslog takes the month in any case ("dec  1 ..." is a timestamp too).
_ANY_CASE_MONTHS = frozenset(
    bytes(c) for m in _MONTHS for c in (m, m.lower(), m.upper(), m.capitalize())
)
# Every valid PRI part (RFC 5424 §6.2.1: no leading zero, at most 191).
_PRI = frozenset(b"<%d>" % p for p in range(192))
# What a message without a valid PRI is given: user.notice, as rsyslog treats it.
DEFAULT_PRI = b"<13>"
# "Mmm dd hh:mm:ss" and the space after it (or the end of the message), as
# shapes: digits read as "9", letters as "a" (one translate, one set lookup).
_SHAPE = bytes(
    ord("9") if chr(c).isdigit() else ord("a") if chr(c).isalpha() and c < 128 else c
    for c in range(256)
)
_STAMP_SHAPES = frozenset(
    (b"aaa 99 99:99:99 ", b"aaa  9 99:99:99 ", b"aaa 99 99:99:99", b"aaa  9 99:99:99")
)
_STAMP = 16  # with its space
# A message's first five bytes hold its PRI part ("<13>D", "<191>"): the offset
# after it (0: no valid PRI), remembered for the few prefixes a host sends;
# bounded (past PRI_CACHE prefixes, a new one is read each time).
PRI_CACHE = 4096


class _PriEnd(dict[bytes, int]):
    def __missing__(self, prefix: bytes) -> int:
        gt = prefix.find(b">", 1)
        end = gt + 1 if gt > 1 and prefix[: gt + 1] in _PRI else 0
        if len(self) < PRI_CACHE:
            self[prefix] = end
        return end


_pri_end = _PriEnd()

# fill_in's one pass over a batch joined with NULs: the ">" that ends a valid
# PRI at a message's start (the look-behind: NUL, "<", 0-191 without a
# leading zero), a BSD timestamp with a month as _ANY_CASE_MONTHS has it and
# its space, then a space later in the message (else the loop adds one).
# Only the ">" and the timestamp are replaced, so the replacement is literal.
# ``\d`` in a bytes pattern is ASCII only.
_SYSLOG3 = re.compile(
    rb">(?:(?<=\0<\d>)|(?<=\0<[1-9]\d>)|(?<=\0<1[0-8]\d>)|(?<=\0<19[01]>))"
    rb"(?:J(?:an|u[nl])|Feb|Ma[ry]|A(?:pr|ug)|Sep|Oct|Nov|Dec"
    + b"".join(b"|" + m for m in (*(m.lower() for m in _MONTHS), *(m.upper() for m in _MONTHS)))
    + rb") [ \d]\d \d\d:\d\d:\d\d (?=[^ \0]* )"
)


def bsd_timestamp(month: int, day: int, hour: int, minute: int, second: int) -> bytes:
    """``Mmm dd hh:mm:ss`` (RFC 3164 §4.1.2: the day padded with a space)."""
    return b"%s %2d %02d:%02d:%02d" % (_MONTHS[month - 1], day, hour, minute, second)


def prefix(timestamp: bytes, hostname: bytes) -> bytes:
    """What goes after PRI in every message of a batch: the time of reception and
    the host name, each followed by a space."""
    return timestamp + b" " + hostname + b" "


def fill_in(messages: list[bytes], head: bytes) -> list[bytes]:
    """Each message with its timestamp replaced and the host name filled in
    (the module docstring's rules); ``head`` is :func:`prefix`'s result.

    A batch in which every message has PRI, a BSD timestamp and a space
    after it (what syslog(3), ``logger`` and journald write) is done in three
    calls into C: joined with NULs, ``_SYSLOG3.subn``, split again. That is
    0.5 against 1.5 us a message in the loop (:func:`_fill_in_each`), which
    took a third of relay's CPU reading /dev/log at full speed. Any other
    batch (a NUL in a message, one message of another shape) goes through
    the loop, which gives the same bytes for these (tests/protocol)."""
    replacement = b">" + head
    if messages and b"\\" not in replacement:  # (a template to subn; no host name has one)
        filled, done = _SYSLOG3.subn(replacement, b"\0" + b"\0".join(messages))
        if done == len(messages):
            out = filled[1:].split(b"\0")
            # As many parts as messages: no message held a NUL, so each match
            # was at a message's start, one each.
            if len(out) == done:
                return out
    return _fill_in_each(messages, head)


def _fill_in_each(messages: list[bytes], head: bytes) -> list[bytes]:
    """:func:`fill_in`, a message at a time: for any bytes."""
    out: list[bytes] = []
    append = out.append
    join = b"".join
    pri_end = _pri_end.__getitem__
    shapes, months, shape = _STAMP_SHAPES, _ANY_CASE_MONTHS, _SHAPE
    for message in messages:
        start = pri_end(message[:5])
        if start:
            pri = message[:start]
            if message[start : start + _STAMP].translate(shape) in shapes and (
                message[start : start + 3] in months
            ):
                start += _STAMP
                if message.find(b" ", start) >= 0:  # the fast path: "<PRI>Mmm dd hh:mm:ss "
                    append(join((pri, head, message[start:])))
                    continue
        else:
            pri = DEFAULT_PRI
        if message.find(b" ", start) < 0:  # only a TAG, or nothing
            append(join((pri, head, message[start:], b" ")))
        else:
            append(join((pri, head, message[start:])))
    return out


def annotation(pid: int, uid: int, gid: int, comm: str | None) -> bytes:
    """The trusted properties rsyslog's imuxsock (``Annotate="on"``) appends to MSG:
    `` @[_PID=1234 _UID=0 _GID=0 _COMM=logger]`` (rsyslog adds _EXE and _CMDLINE
    too; relay reads only the name, and leaves _COMM out when it cannot)."""
    name = "" if comm is None else f" _COMM={comm}"
    return f" @[_PID={pid} _UID={uid} _GID={gid}{name}]".encode("utf-8", "replace")


class StreamDecoder:
    """A local stream's frames: octet-counted when it starts with a digit, else
    terminated by LF or NUL (glibc's syslog(3) ends each message with a NUL on
    a stream socket; ``logger -T`` with LF). Sans-IO around :class:`FrameDecoder`."""

    def __init__(self, max_frame: int, oversize: OversizePolicy) -> None:
        self.max_frame = max_frame
        self.oversize = oversize
        self.decoder: FrameDecoder | None = None
        self._nul = False  # NULs are trailers (not octet-counted)
        self._seen = (0, 0, 0)

    def receive_data(self, data: bytes) -> list[bytes]:
        """The complete frames in ``data`` (``b""`` at the end of the stream)."""
        if self.decoder is None:
            start = data.lstrip(b"\r\n\x00")
            if not start:
                return []
            counted = start[0] in b"0123456789"
            self.decoder = FrameDecoder(
                framing=Framing.OCTET_COUNTING if counted else Framing.NON_TRANSPARENT,
                max_frame=self.max_frame,
                oversize=self.oversize,
            )
            self._nul = not counted
            data = start
        if self._nul and b"\x00" in data:
            data = data.replace(b"\x00", b"\n")
        return self.decoder.receive_data(data)

    def take_counts(self) -> list[tuple[str, int]]:
        """The counters to add since the last call: truncated, dropped_oversize,
        framing_errors (only those that grew)."""
        if self.decoder is None:
            return []
        now = self.decoder.statistics()
        grown = [
            (name, new - old)
            for name, new, old in zip(
                ("truncated", "dropped_oversize", "framing_errors"), now, self._seen, strict=True
            )
            if new != old
        ]
        self._seen = now
        return grown
