"""RELP input: syslog over RELP (rsyslog omrelp's protocol), plain TCP.

The listener, ``max_connections`` and the stop are the TCP input's
(:class:`relay.inputs.tcp.TcpInput`); only a connection is served differently.
Each read is fed to a sans-IO :class:`RelpServer`; the messages it held become
ONE batch, which is queued (:meth:`Router.put`, which waits while the spools
are full) and only then answered: one ``rsp 200`` per message, all in one
write. So an acknowledged message is in every output's spool (and with
``durability = "fsync"`` on disk): that is what RELP promises the sender. While
the spools are full nothing is answered and the connection is not read, so the
sender's window fills and its own queue takes over.

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

from relay.inputs.tcp import RECV_SIZE, STOP_IDLE, TcpInput, _stream_peer
from relay.message import Batch
from relay.protocol.framing import OversizePolicy, utf8_cut
from relay.protocol.relp import (
    CloseRequested,
    ConnectionClosed,
    ProtocolViolation,
    RelpServer,
    ServerEvent,
    SessionOpened,
    State,
    SyslogMessage,
    violation_reply,
)
from relay.tlswire import ByteStream

log = logging.getLogger("relay.input")

COUNTERS = (
    "received",
    "bytes",
    "connections",
    "protocol_errors",
    "truncated",
    "dropped_oversize",
    # Read but not queued when the stop came (queues full): never acknowledged,
    # so the sender still has them and sends them again. Not a loss.
    "unacknowledged_at_stop",
)


class RelpInput(TcpInput):
    """A relp:// listener: :class:`TcpInput`'s accept loop, a RELP session per connection."""

    async def _connection(
        self, stream: trio.SocketStream | ByteStream, slots: trio.Semaphore, peer: str = ""
    ) -> None:
        peer = peer or _stream_peer(stream)
        self.counters.add("connections")
        self.active += 1
        try:
            await self._session(stream, peer)
        finally:
            self.active -= 1
            slots.release()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _session(self, stream: trio.SocketStream | ByteStream, peer: str) -> None:
        server = RelpServer()
        while True:
            data = await self._read(stream, peer)
            if not data and self.stopping.is_set() and server.state is State.OPEN:
                # Quiet at stop: all it wrote is answered; tell it we are going.
                await _send(stream, server.server_close())
                return
            out: list[bytes] = []
            messages: list[bytes] = []
            txnrs: list[int] = []
            last: ServerEvent | ProtocolViolation | ConnectionClosed | None = None
            for event in server.receive_data(data):
                if isinstance(event, SyslogMessage):
                    messages.append(event.data)
                    txnrs.append(event.txnr)
                elif isinstance(event, SessionOpened):
                    out.append(server.accept_open())  # comes before any message
                else:  # close, a violation or EOF: the last event of the session
                    last = event
            if isinstance(last, ProtocolViolation):
                # The session is dead and owes nothing; the messages of this read
                # are not queued: unacknowledged, the sender sends them again.
                self.counters.add("protocol_errors")
                log.warning(
                    "input %s: RELP error from %s: %s; closing", self.config.name, peer, last.text
                )
                out.append(violation_reply(last))
            elif txnrs:
                if max(map(len, messages)) > self.config.max_message_size:
                    messages = self._limit(messages, peer)
                if messages:
                    await self._queue(messages, peer)
                out.extend([server.send_rsp(txnr) for txnr in txnrs])
            if isinstance(last, CloseRequested):
                out.append(server.send_rsp(last.txnr))
            if out:
                await _send(stream, b"".join(out))
            if last is not None or not data:
                return

    async def _read(self, stream: trio.SocketStream | ByteStream, peer: str) -> bytes:
        try:
            if self.stopping.is_set():
                with trio.move_on_after(STOP_IDLE):
                    return await stream.receive_some(RECV_SIZE)
                return b""
            return await self._receive_until_stop(stream)
        except trio.BrokenResourceError as exc:
            log.info(
                "input %s: connection from %s broken: %s",
                self.config.name,
                peer,
                exc.__cause__ or exc,
            )
            return b""

    def _limit(self, messages: list[bytes], peer: str) -> list[bytes]:
        """Apply ``max_message_size`` and ``oversize`` (a dropped message is still
        answered: it was handled as configured, and counted)."""
        limit = self.config.max_message_size
        long = sum(1 for m in messages if len(m) > limit)
        if self.config.oversize is OversizePolicy.DROP:
            self.counters.add("dropped_oversize", long)
            kept = [m for m in messages if len(m) <= limit]
        else:
            self.counters.add("truncated", long)
            kept = [utf8_cut(m, limit) if len(m) > limit else m for m in messages]
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


async def _send(stream: trio.SocketStream | ByteStream, data: bytes) -> None:
    """Write ``data``; a peer that went away is not an error of ours."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
