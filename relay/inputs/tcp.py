"""TCP input: RFC 6587 syslog over plain TCP.

One task per connection reads up to ``RECV_SIZE`` bytes at a time, lets the
sans-IO :class:`FrameDecoder` cut them into frames and queues them as one
batch. When an output's spool is full, :meth:`Router.put` waits and the
connection is not read: back-pressure reaches the sender through TCP, so its
own queue engages rather than ours overflowing.

At most ``max_connections`` connections are served at once; past that the
listener stops accepting (the kernel's backlog holds the next few) until one
closes. Nothing is buffered without a bound.

At stop (:meth:`TcpInput.stop`) the listeners close, and each connection is
read until it has been quiet for STOP_IDLE or ends: what a sender already
wrote into our kernel was, as far as it knows, accepted, so it is taken in
and queued (then saved with the spool) rather than dropped with the socket.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Any

import trio

from relay.config import InputConfig, host_port
from relay.errors import StartupError
from relay.message import Batch
from relay.protocol.framing import FrameDecoder
from relay.routing import Router
from relay.stats import Counters
from relay.tlswire import ByteStream, TlsAcceptor, TlsStream, as_byte_stream
from relay.tlswire import aclose as tls_aclose

log = logging.getLogger("relay.input")

# One read: large enough that a busy connection costs one await per few
# hundred messages (ARCHITECTURE.md: batch everything), small enough to bound
# per-connection memory.
RECV_SIZE = 256 * 1024

# At stop: a connection quiet this long has nothing more in our kernel's buffer.
STOP_IDLE = 0.1

COUNTERS = (
    "received",
    "bytes",
    "connections",
    "truncated",
    "dropped_oversize",
    "framing_errors",
    "lost_at_stop",
)


class TcpInput:
    def __init__(self, config: InputConfig, router: Router, counters: Counters) -> None:
        self.config = config
        self.router = router
        self.counters = counters
        self.listeners: list[trio.SocketListener] = []
        self.address = config.endpoint.url
        self.active = 0
        self.stopping = trio.Event()
        self._reads: set[trio.CancelScope] = set()  # connections waiting for data
        # tls:// and relp+tls://: the handshake before the session (open() builds it).
        self.tls: TlsAcceptor | None = None

    async def open(self) -> None:
        """Bind and listen; StartupError with one clear line on failure."""
        endpoint = self.config.endpoint
        if self.config.tls is not None:
            self.tls = TlsAcceptor(self.config.name, self.config.tls, self.counters)
        try:
            self.listeners = await trio.open_tcp_listeners(
                endpoint.port, host=endpoint.host, backlog=1024
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason = "address already in use (is another syslog daemon running?)"
            raise StartupError(
                f"input {self.config.name}: cannot listen on {endpoint.url}: {reason}"
            ) from None
        sockname = self.listeners[0].socket.getsockname()
        host, port = sockname[0], sockname[1]
        scheme = endpoint.scheme
        self.address = f"{scheme}://{host_port(host, port)}"

    async def stop(self) -> None:
        """Stop accepting; connections end once they are quiet (see the module doc)."""
        self.stopping.set()
        for scope in self._reads:
            scope.cancel()
        for listener in self.listeners:
            await listener.aclose()

    async def serve(self) -> None:
        """Accept and serve connections until stopped (and they end) or cancelled."""
        slots = trio.Semaphore(self.config.max_connections)
        try:
            async with trio.open_nursery() as nursery:
                for listener in self.listeners:
                    nursery.start_soon(self._accept, listener, slots, nursery)
        finally:
            for listener in self.listeners:
                await listener.aclose()

    async def _accept(
        self, listener: trio.SocketListener, slots: trio.Semaphore, nursery: trio.Nursery
    ) -> None:
        while True:
            if slots.value == 0:
                log.warning(
                    "input %s: %d connections open (max_connections); not accepting more "
                    "until one closes",
                    self.config.name,
                    self.config.max_connections,
                )
            await slots.acquire()
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                slots.release()
                return  # stop() closed the listener
            except OSError as exc:
                slots.release()
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error(
                        "input %s: cannot accept: %s; pausing 1 s", self.config.name, exc.strerror
                    )
                    await trio.sleep(1)  # back-off, not synchronisation
                continue
            if self.tls is None:
                nursery.start_soon(self._connection, stream, slots)
            else:
                nursery.start_soon(self._tls_connection, stream, slots)

    async def _tls_connection(self, stream: trio.SocketStream, slots: trio.Semaphore) -> None:
        """Handshake, then the same session as plain TCP over the TLS stream."""
        assert self.tls is not None
        peer = _peer_name(stream.socket)
        try:
            ssl_stream = await self.tls.accept(stream, peer)
        except BaseException:
            slots.release()
            await trio.aclose_forcefully(stream)
            raise
        if ssl_stream is None:  # refused: logged and counted, nothing queued
            slots.release()
            return
        await self._connection(as_byte_stream(ssl_stream), slots, peer)

    async def _connection(
        self, stream: trio.SocketStream | ByteStream, slots: trio.Semaphore, peer: str = ""
    ) -> None:
        """One connection's bookkeeping around :meth:`_session`; the close is
        bounded (a TLS peer that does not read must not hold up a stop)."""
        peer = peer or _stream_peer(stream)
        self.counters.add("connections")
        self.active += 1
        try:
            await self._session(stream, peer)
        finally:
            self.active -= 1
            slots.release()
            await tls_aclose(stream)

    async def _session(self, stream: trio.SocketStream | ByteStream, peer: str) -> None:
        """Frames in, batches queued, until the connection ends (or the stop)."""
        config = self.config
        counters = self.counters
        decoder = FrameDecoder(
            framing=config.framing, max_frame=config.max_message_size, oversize=config.oversize
        )
        put = self.router.put
        name = config.name
        try:
            while True:
                data = await self._read(stream, peer)
                frames = decoder.receive_data(data)
                if frames:
                    batch = Batch(
                        frames, received=time.time(), peer=peer, input=name, wire=decoder.wire
                    )
                    counters.add("received", len(frames))
                    counters.add("bytes", batch.nbytes)
                    try:
                        await put(batch)
                    except trio.Cancelled:  # stopping while the queues are full
                        counters.add("lost_at_stop", len(frames))
                        log.error(
                            "input %s: %d messages from %s were read but not queued "
                            "before the stop (queues full)",
                            name,
                            len(frames),
                            peer,
                        )
                        raise
                if not data:
                    break
        finally:
            truncated, dropped, errors = decoder.statistics()
            if truncated or dropped or errors:
                counters.add("truncated", truncated)
                counters.add("dropped_oversize", dropped)
                counters.add("framing_errors", errors)
                log.warning(
                    "input %s: connection from %s: %d messages truncated and %d dropped "
                    "(over %d bytes), %d framing errors",
                    name,
                    peer,
                    truncated,
                    dropped,
                    config.max_message_size,
                    errors,
                )

    async def _read(self, stream: trio.SocketStream | ByteStream, peer: str) -> bytes:
        """The next read, ``b""`` at the end: EOF, a broken connection, or (at
        stop) once the sender has been quiet for STOP_IDLE."""
        try:
            if self.stopping.is_set():
                return await _read_until_quiet(stream)
            return await self._receive_until_stop(stream)
        except trio.BrokenResourceError as exc:
            log.info(
                "input %s: connection from %s broken: %s",
                self.config.name,
                peer,
                exc.__cause__ or exc,
            )
            return b""

    async def _receive_until_stop(self, stream: trio.SocketStream | ByteStream) -> bytes:
        """The next read; when the stop begins while waiting, the rest of the
        buffered data instead (``b""`` once the connection is quiet)."""
        # Only the wait for data is cancelled, never a put: trio's receive_some
        # either returns data or is cancelled having taken none.
        with trio.CancelScope() as scope:
            self._reads.add(scope)
            try:
                return await stream.receive_some(RECV_SIZE)
            finally:
                self._reads.discard(scope)
        return await _read_until_quiet(stream)


async def _read_until_quiet(stream: trio.SocketStream | ByteStream) -> bytes:
    """At stop: what the sender already wrote, ``b""`` after STOP_IDLE of quiet."""
    with trio.move_on_after(STOP_IDLE):
        return await stream.receive_some(RECV_SIZE)
    return b""


def _stream_peer(stream: Any) -> str:
    """The peer of a socket stream, or of the socket under a TLS stream."""
    if isinstance(stream, TlsStream):
        stream = stream.ssl
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return _peer_name(stream.socket) if isinstance(stream, trio.SocketStream) else "?"


def _peer_name(sock: trio.socket.SocketType) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "?"
    return host_port(peer[0], peer[1])
