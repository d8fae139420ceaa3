"""RELP input: syslog over RELP (rsyslog omrelp's protocol), plain TCP or TLS.

The listener, ``max_connections``, the stop, the reads and the close are the
TCP input's (:class:`relay.inputs.tcp.TcpInput`); only the session differs.
Each read is fed to a sans-IO :class:`RelpServer`; the messages it held become
ONE batch, which is queued (:meth:`Router.put`, which waits while the spools
are full) and only then answered: one ``rsp 200`` per message. So an
acknowledged message is in every output's spool (and with
``durability = "fsync"`` on disk): that is what RELP promises the sender. While
the spools are full nothing is answered and the connection is not read, so the
sender's window fills and its own queue takes over.

The answers are written by a task of their own (:class:`Replies`), so reading
never waits for writing. It must not: librelp's client (omrelp) reads our
answers only when it sends, one TLS record per read. Once its queue is empty
it reads nothing, and answers we could not write yet would stop us reading its
last messages: both sides wait for ever (seen with omrelp over TLS, 1 run in 12
under load). Answers that wait are bounded by the client's window; a client
that ignores its window meets ``REPLY_BACKLOG``, and is then not read until it
reads.

A peer that breaks RELP gets the error ``rsp`` (if one is owed) and
``serverclose``, one log line, and the connection is closed. At stop, what the
sender already wrote is read, queued and acknowledged, then ``serverclose``
tells it to resend the rest elsewhere or later.
"""

from __future__ import annotations

import contextlib
import logging
import time

import trio

from relay.inputs.tcp import CONNECTION_COUNTERS, Connection, TcpInput
from relay.message import Batch
from relay.protocol.framing import OversizePolicy, limit_frames
from relay.protocol.relp import (
    CloseRequested,
    ConnectionClosed,
    ProtocolViolation,
    RelpServer,
    ServerEvent,
    SessionOpened,
    State,
    SyslogMessages,
    violation_reply,
)
from relay.tls.stream import ByteStream

log = logging.getLogger("relay.input")

# Answers waiting to be written (beyond what the kernel took), past which the
# connection is not read until the client reads. A client keeping to its
# window never has more than ``window`` answers waiting, at most 24 bytes each
# ("999999999 rsp 6 200 OK\n"): 2 MiB covers a window of 65,536 (the largest
# relay's own RELP output takes; omrelp's default is 128, and 4096 is what
# keeps two hops fast on loopback) and bounds what a client that never reads can cost.
REPLY_BACKLOG = 2 << 20
# At the end of a session (its close answered, a protocol error, the stop),
# how long the last answers may take to write before the connection is closed.
FINAL_REPLY_TIMEOUT = 10.0

COUNTERS = (
    "received",
    "bytes",
    *CONNECTION_COUNTERS,
    "protocol_errors",
    "truncated",
    "dropped_oversize",
    # Read but not queued when the stop came (queues full): never acknowledged,
    # so the sender still has them and sends them again. Not a loss.
    "unacknowledged_at_stop",
)


class RelpInput(TcpInput):
    """A relp:// listener: :class:`TcpInput`'s accept loop, a RELP session per connection."""

    async def _session(
        self, stream: trio.SocketStream | ByteStream, connection: Connection
    ) -> None:
        replies = Replies(stream, REPLY_BACKLOG)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(replies.write)
            if await self._converse(RelpServer(), stream, connection, replies):
                replies.finish()  # its last answers, then the connection closes
            else:
                nursery.cancel_scope.cancel()  # gone: nobody reads what is left

    async def _converse(
        self,
        server: RelpServer,
        stream: trio.SocketStream | ByteStream,
        connection: Connection,
        replies: Replies,
    ) -> bool:
        """Read, queue, answer until the session ends; True if it owes final answers."""
        peer = connection.peer
        told = False
        while True:
            if replies.full() and not told:
                told = True  # once a session: it says what is wrong, not how often
                log.warning(
                    "input %s: %s does not read our answers (%d bytes of them wait); "
                    "not reading from it until it does",
                    self.config.name,
                    peer,
                    replies.waiting(),
                )
            await replies.wait_room()
            data = await self._read(stream, connection)
            ending = self.stopping.is_set() or connection.closing
            if not data and ending and server.state is State.OPEN:
                # Quiet at stop, idle, or evicted: all it wrote is answered;
                # tell it we are going (it reconnects when it has more).
                replies.add([server.server_close()])
                return True
            events = server.receive_data(data)
            out: list[bytes] = []
            if events and isinstance(events[-1], SessionOpened):
                # The open is answered first; what the client sent behind it
                # in the same write (imrelp takes that) is read after.
                out.append(server.accept_open())
                events = events[:-1] + server.resume()
            if events and isinstance(events[-1], ProtocolViolation):
                # A violation ends the session (it is the last event). The
                # messages the same read held before it are not answered:
                # unacknowledged, the sender sends them again.
                replies.add(out)
                self._violation(events[-1], peer, replies)
                return True
            messages: list[bytes] = []
            txnrs: list[int] = []
            last: ServerEvent | ProtocolViolation | ConnectionClosed | None = None
            for event in events:
                if isinstance(event, SyslogMessages):
                    messages.extend(event.messages)
                    txnrs.extend(event.txnrs)
                else:  # close or EOF: the last event of the session
                    last = event
            if txnrs:
                if max(map(len, messages)) > self.config.max_message_size:
                    messages = self._limit(messages, peer)
                if messages:
                    await self._queue(messages, peer)
                out.append(server.send_ok(txnrs))
            if isinstance(last, CloseRequested):
                out.append(server.send_rsp(last.txnr))
            replies.add(out)
            if not data or isinstance(last, ConnectionClosed):
                return False
            if last is not None:
                return True

    def _violation(self, violation: ProtocolViolation, peer: str, replies: Replies) -> None:
        """The peer broke RELP: the error rsp if one is owed, serverclose, one line."""
        self.counters.add("protocol_errors")
        log.warning(
            "input %s: RELP error from %s: %s; closing", self.config.name, peer, violation.text
        )
        replies.add([violation_reply(violation)])

    def _limit(self, messages: list[bytes], peer: str) -> list[bytes]:
        """Apply ``max_message_size`` and ``oversize`` (a dropped message is still
        answered: it was handled as configured, and counted)."""
        limit = self.config.max_message_size
        kept, long = limit_frames(messages, limit, self.config.oversize)
        if self.config.oversize is OversizePolicy.DROP:
            self.counters.add("dropped_oversize", long)
        else:
            self.counters.add("truncated", long)
        log.warning(
            "input %s: %d messages from %s over %d bytes %s",
            self.config.name,
            long,
            peer,
            limit,
            "dropped" if self.config.oversize is OversizePolicy.DROP else "truncated",
        )
        return kept

    async def _queue(self, messages: list[bytes], peer: str) -> None:
        name = self.config.name
        batch = Batch(messages, received=time.time(), peer=peer, input=name)
        self.counters.add("received", len(messages))
        self.counters.add("bytes", batch.nbytes)
        try:
            if self.limit is not None:
                # Delayed, not answered yet: the client waits (and at the stop
                # sends it again). Dropped: answered, as rsyslog's imrelp does.
                limited = await self.limit.apply(batch)
                if limited is None:
                    return
                batch = limited
            await self.router.put(batch)
            await self.router.wait_durable()  # fsync durability: on disk before the ack
        except trio.Cancelled:  # stopping while the queues are full
            self.counters.add("unacknowledged_at_stop", len(messages))
            log.error(
                "input %s: %d messages from %s were read but not queued before the stop "
                "(queues full); they were not acknowledged, so the sender still has them",
                name,
                len(messages),
                peer,
            )
            raise


class Replies:
    """What a session owes its client, written in order by :meth:`write`.

    The reader adds answers and goes on reading; the writer sends all that is
    waiting in one write (few, full TLS records: librelp reads one record per
    read). The reader waits (:meth:`wait_room`) only while more than
    ``backlog`` bytes wait, which a client keeping to its window never causes.
    """

    def __init__(
        self, stream: trio.SocketStream | ByteStream, backlog: int = REPLY_BACKLOG
    ) -> None:
        self._stream = stream
        self._backlog = backlog
        self._waiting: list[bytes] = []
        self._size = 0  # bytes added and not yet written
        self._finished = False
        self._added = trio.Event()
        self._written = trio.Event()

    def add(self, replies: list[bytes]) -> None:
        if replies:
            self._waiting.extend(replies)
            self._size += sum(map(len, replies))
            self._added.set()

    def finish(self) -> None:
        """Nothing more will be added: :meth:`write` returns once all is written."""
        self._finished = True
        self._added.set()

    def waiting(self) -> int:
        """Bytes of answers added and not yet written."""
        return self._size

    def full(self) -> bool:
        """Whether :meth:`wait_room` would wait."""
        return self._size > self._backlog

    async def wait_room(self) -> None:
        while self.full():
            self._written = trio.Event()
            await self._written.wait()

    async def write(self) -> None:
        """Write what waits, until finished; a peer that went away is not our error."""
        try:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._write_all()
        finally:
            self._size = 0  # written, or never will be: the reader must not wait
            self._written.set()

    async def _write_all(self) -> None:
        while self._waiting or not self._finished:
            if not self._waiting:
                self._added = trio.Event()
                await self._added.wait()
                continue
            data = b"".join(self._waiting)
            self._waiting.clear()
            if self._finished:
                # The last answers: a client that does not take them soon is gone.
                with trio.move_on_after(FINAL_REPLY_TIMEOUT):
                    await self._stream.send_all(data)
                return
            await self._stream.send_all(data)
            self._size -= len(data)
            self._written.set()
