"""Messages as they travel through the relay.

The hot path moves :class:`Batch` values: the raw bytes of every message read
in one go, plus what all of them share (receive time, peer, input). Nothing is
parsed on the way through; a forwarded message leaves byte-identical.

:class:`Message` is the per-message view a feature asks for when it needs
fields (a filter, a rate-limit key on HOSTNAME). It is made on
demand, never on the hot path, and parses lazily: ``pri`` costs a few byte
operations, the full RFC 5424/3164 parse happens on the first ``parsed()``.
The JSON form (relay/protocol/jsonform.py, for file ``format = "json"``
and the other JSON outputs) is a caller of the parsers, but not of
:class:`Message`: it reads a whole batch's ``messages`` at once, with a fast
path for the common shapes and :func:`~relay.protocol.detect.parse_any` for
the rest, so that no per-message object is made. Nothing in the relay makes
a :class:`Message` yet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from relay.errors import ParseError
from relay.protocol import framing
from relay.protocol.detect import parse_any
from relay.protocol.syslog import SyslogMessage, parse_pri

# A local sender's (pid, uid, gid), as the kernel reports them (SCM_CREDENTIALS).
Creds = tuple[int, int, int]

# What a queued batch takes in memory beyond its messages' bytes (CPython 3.11,
# 64-bit), for a spool's memory budget (Batch.memory_size). Measured as RSS
# over 128 MiB of batches as the TCP input and a spool's refill make them:
# per message in a list, 47 bytes at 90 bytes a message, 50 at 300, 61 at
# 2,000 (a bytes object's 33-byte header, the allocator's rounding, the list's
# pointer); per batch about 300 (the Batch, its list, its receive time, the
# spool's entry), which matters only when batches hold a message or two.
MESSAGE_OVERHEAD = 56
BATCH_OVERHEAD = 320


class Batch:
    """Messages received together: the unit of work on the hot path.

    ``messages`` are the raw bytes of each message (without framing).
    ``received`` is the wall-clock receive time (seconds since the epoch, with
    microseconds); ``peer`` the sender (``host:port``, a socket path, or ``""``);
    ``input`` the name of the input it came in on. ``octet_counted`` may hold the
    same messages already octet-counted, exactly as they arrived, so that
    forwarding them costs no re-encoding. ``creds`` is the sender's (pid, uid,
    gid) as the kernel reported them, for a batch from a local socket
    (``unix://``, ``unix+stream://``), else None; it is not kept in a spool's
    disk part (the filters and rate limits that read it come before).
    ``stamped``: a local input wrote the reception time into the messages'
    timestamps (as rsyslog's imuxsock does), to the second: a file output
    writes the reception time's microseconds there, as rsyslog writes them
    (not kept on disk either: a batch replayed from disk writes the second).
    """

    __slots__ = (
        "_count",
        "_messages",
        "_octet_counted",
        "creds",
        "input",
        "nbytes",
        "peer",
        "received",
        "stamped",
    )

    def __init__(
        self,
        messages: list[bytes] | None,
        *,
        received: float,
        peer: str = "",
        input: str = "",
        octet_counted: bytes | None = None,
        nbytes: int | None = None,
        count: int | None = None,
        creds: Creds | None = None,
        stamped: bool = False,
    ) -> None:
        if messages is None:
            if octet_counted is None or nbytes is None or count is None:
                raise ValueError("a batch without messages needs octet_counted, nbytes and count")
            self._count = count
        else:
            self._count = len(messages)
        self._messages = messages
        self.received = received
        self.peer = peer
        self.input = input
        self.creds = creds
        self.stamped = stamped
        self._octet_counted = octet_counted
        if nbytes is None:
            nbytes = sum(map(len, messages)) if messages is not None else 0
        self.nbytes = nbytes

    @property
    def messages(self) -> list[bytes]:
        """The raw bytes of each message. A batch made from octet-counted frames
        alone (``messages=None``: the TCP input's hot path) slices them out of
        ``octet_counted`` at the first call, for a caller that needs them one by
        one (the processing stage, a disk spool, a file output); forwarding it
        over TCP never does."""
        messages = self._messages
        if messages is None:
            assert self._octet_counted is not None
            messages = self._messages = framing.split_octet_counted(self._octet_counted)
        return messages

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<Batch {self._count} messages, {self.nbytes} bytes from {self.peer!r}>"

    def memory_size(self) -> int:
        """About what the batch takes in memory, in bytes: its messages one object
        each (if made), the octet-counted frames it keeps (if any), and the
        objects around them (MESSAGE_OVERHEAD, BATCH_OVERHEAD). For 90-byte
        messages that is 1.5 times ``nbytes``; a spool bounds its memory by it."""
        size = BATCH_OVERHEAD
        if self._messages is not None:
            size += self.nbytes + MESSAGE_OVERHEAD * self._count
        if self._octet_counted is not None:
            size += len(self._octet_counted)
        return size

    def sliced(self) -> list[bytes]:
        """The messages, as :attr:`messages`, but not kept when the batch holds only
        octet-counted frames: for a caller that reads them once and lets the
        batch wait on (a spool writing it to disk), so that it does not hold
        both forms, twice its memory_size."""
        if self._messages is None:
            assert self._octet_counted is not None
            return framing.split_octet_counted(self._octet_counted)
        return self._messages

    def octet_counted(self) -> bytes:
        """The batch as RFC 6587 octet-counted frames.

        The frames as received when the input kept them (``octet_counted``); otherwise
        encoded anew at each call, not cached: a batch waits in its spool
        (unconfirmed in a TCP output's window, or at the head while the
        upstream is down) for as long as it takes, and a cached copy would
        double its memory beyond what the spool counts (queue_max_bytes).
        """
        if self._octet_counted is None:
            return framing.encode_octet_counted(self.messages)
        return self._octet_counted

    def octet_counted_parts(self) -> list[bytes]:
        """:meth:`octet_counted` as parts to join (see :func:`octet_counted_wire`)."""
        if self._octet_counted is None:
            return framing.octet_counted_parts(self.messages)
        return [self._octet_counted]

    def split(self, count: int) -> tuple[Batch, Batch]:
        """The first ``count`` messages and the rest, as two batches."""
        return self.with_messages(self.messages[:count]), self.with_messages(self.messages[count:])

    def with_messages(self, messages: list[bytes]) -> Batch:
        """A batch of ``messages`` from the same sender, input and time as this one."""
        return Batch(
            messages,
            received=self.received,
            peer=self.peer,
            input=self.input,
            creds=self.creds,
            stamped=self.stamped,
        )

    def __iter__(self) -> Iterator[Message]:
        for raw in self.messages:
            yield Message(raw, received=self.received, peer=self.peer)


class Message:
    """One message: its exact bytes plus receive time and peer; fields on demand."""

    __slots__ = ("_parsed", "peer", "raw", "received")

    def __init__(self, raw: bytes, *, received: float, peer: str = "") -> None:
        self.raw = raw
        self.received = received
        self.peer = peer
        self._parsed: SyslogMessage | None = None

    def __repr__(self) -> str:
        return f"<Message {self.raw[:60]!r} from {self.peer!r}>"

    @property
    def pri(self) -> int | None:
        """The PRI value (facility * 8 + severity), or None when there is none."""
        try:
            return parse_pri(self.raw)[0]
        except ParseError:
            return None

    def parsed(self) -> SyslogMessage:
        """The full RFC 5424 / RFC 3164 parse; raises ParseError if impossible.

        A BSD timestamp has no year: it is the one that puts the timestamp
        nearest the receive time (not the time of this parse, which for a
        message replayed from the spool may be in the next year)."""
        if self._parsed is None:
            received = dt.datetime.fromtimestamp(self.received, dt.UTC)
            self._parsed = parse_any(self.raw, now=received)
        return self._parsed


def octet_counted_wire(batches: list[Batch]) -> bytes:
    """The octet-counted frames of ``batches``, in one buffer made with one
    join: joining each batch's frames and then the batches copied every byte
    twice (and made a large buffer per batch to throw away)."""
    if len(batches) == 1:
        return batches[0].octet_counted()
    parts: list[bytes] = []
    for batch in batches:
        parts += batch.octet_counted_parts()
    return b"".join(parts)


def format_received(received: float) -> str:
    """A receive time as RFC 3339 with microseconds, in UTC."""
    when = dt.datetime.fromtimestamp(received, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
