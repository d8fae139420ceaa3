"""TCP input: RFC 6587 syslog over plain TCP.

One task per connection reads up to ``RECV_SIZE`` bytes at a time, lets the
sans-IO :class:`FrameDecoder` cut them into frames and queues them as one
batch. When an output's spool is full, :meth:`Router.put` waits and the
connection is not read: back-pressure reaches the sender through TCP, so its
own queue engages rather than ours overflowing.

At most ``max_connections`` connections are open at once. A new one past
that takes the place of the connection that has sent nothing for longest (at
least EVICT_IDLE), or, when every connection is busy, is refused at once:
counted and logged, never left waiting in the kernel's backlog. A connection
that sends nothing for ``idle_timeout`` is closed. Nothing is buffered
without a bound.

Each connection (its TLS handshake and its session) runs under one guard:
an error nobody handled closes that connection only, is counted
(``session_errors``) and logged, rate-limited; every other connection and
everything queued carry on.

At stop (:meth:`TcpInput.stop`) the listeners close, and each connection is
read until it has been quiet for STOP_IDLE or ends: what a sender already
wrote into our kernel was, as far as it knows, accepted, so it is taken in
and queued (then saved with the spool) rather than dropped with the socket.
A batch still waiting for room in a full spool when the stop ends the
reading is taken past the spool's budget and saved with it
(``kept_at_stop``), never dropped.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import time

import trio

from relay.config import InputConfig, host_port
from relay.errors import ADDRESS_IN_USE, RelayError, StartupError
from relay.inputs.limit import InputLimit, for_input
from relay.inputs.proxied import ProxyGate, client_peer
from relay.message import Batch
from relay.protocol.framing import FrameDecoder
from relay.spool.router import Router
from relay.stats import Counters, LogLimit
from relay.tls.stream import ByteStream, TlsAcceptor, as_byte_stream
from relay.tls.stream import aclose as tls_aclose

log = logging.getLogger("relay.input")

# One read: large enough that a busy connection costs one await per few
# hundred messages (the hot path works in batches: docs/ARCHITECTURE.md), small
# enough to bound per-connection memory.
RECV_SIZE = 256 * 1024
# listen(2) backlog: connections the kernel holds for us before accept().
BACKLOG = 1024

# At stop: a connection quiet this long has nothing more in our kernel's buffer.
STOP_IDLE = 0.1
# When max_connections are open, a new connection takes the place of the one
# that has sent nothing for longest, if that has been quiet this long (a sender
# that is sending is never cut off for one that might); otherwise the new one
# is refused at once. Never a silent wait in the kernel's backlog.
EVICT_IDLE = 1.0
# Log lines about a full input and idle closes: one per this many seconds, the
# rest counted and given with the next line.
FULL_LOG_INTERVAL = 10.0
# Log lines about sessions ended by an error: one per kind of error per input
# per this many seconds (a flood of bad clients must not flood the log).
FAULT_LOG_INTERVAL = 60.0

# What every stream input (tcp, tls, relp, relp+tls) counts about its connections.
CONNECTION_COUNTERS = (
    "connections",
    "idle_timeouts",  # closed after idle_timeout with nothing sent
    "evicted_idle",  # closed, idle, to make room for a new one (max_connections)
    "refused_connections",  # closed at once: max_connections open, none idle
    "session_errors",  # closed on an error nobody handled (logged)
)

COUNTERS = (
    "received",
    "bytes",
    *CONNECTION_COUNTERS,
    "truncated",
    "dropped_oversize",
    "framing_errors",
    # Read while the spools were full when the stop came: taken past their
    # budgets and saved with them (the sender cannot send them again).
    "kept_at_stop",
)


class Connection:
    """One accepted connection: who, when it last sent, and its pending read."""

    __slots__ = ("closing", "peer", "read_scope", "waiting_since")

    def __init__(self, peer: str, now: float) -> None:
        self.peer = peer
        self.waiting_since = now  # when the pending read began (or the connection came)
        self.read_scope: trio.CancelScope | None = None  # set while waiting for data
        self.closing = ""  # why we close it: "idle", "evicted" ("" while it is served)


async def _shared_listeners(host: str, port: int, backlog: int) -> list[trio.SocketListener]:
    """What trio.open_tcp_listeners gives, with SO_REUSEPORT: each worker
    process binds the same address and the kernel spreads the connections
    over them (by a hash of the peer's address and port)."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    socks = []
    try:
        for family, kind, proto, _, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(backlog)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return [trio.SocketListener(sock) for sock in socks]


class TcpInput:
    def __init__(self, config: InputConfig, router: Router, counters: Counters) -> None:
        self.config = config
        self.router = router
        self.limit = for_input(config, counters)
        self.counters = counters
        self.listeners: list[trio.SocketListener] = []
        self.address = config.endpoint.url
        self.stopping = trio.Event()
        # Every accepted connection (handshaking or in session), oldest first.
        self._connections: dict[Connection, None] = {}
        # tls:// and relp+tls://: the handshake before the session (open() builds it).
        self.tls: TlsAcceptor | None = None
        # proxy_protocol: the balancer's PROXY header before anything else.
        self.proxy: ProxyGate | None = None
        if config.proxy_protocol:
            self.proxy = ProxyGate(config.name, config.proxy_trusted, counters)
        self._full_log = LogLimit(FULL_LOG_INTERVAL, "connections turned away")
        self._idle_log = LogLimit(FULL_LOG_INTERVAL, "idle connections closed")
        self._fault_log = LogLimit(FAULT_LOG_INTERVAL, "sessions ended by this error")

    @property
    def active(self) -> int:
        """Connections open now (handshaking or in session)."""
        return len(self._connections)

    async def open(self) -> None:
        """Bind and listen; StartupError with one clear line on failure."""
        endpoint = self.config.endpoint
        if self.config.tls is not None:
            self.tls = TlsAcceptor(self.config.name, self.config.tls, self.counters)
        try:
            if self.config.reuse_port:
                self.listeners = await _shared_listeners(endpoint.host, endpoint.port, BACKLOG)
            else:
                self.listeners = await trio.open_tcp_listeners(
                    endpoint.port, host=endpoint.host, backlog=BACKLOG
                )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason = ADDRESS_IN_USE
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
        for connection in self._connections:
            if connection.read_scope is not None:
                connection.read_scope.cancel()
        for listener in self.listeners:
            await listener.aclose()

    async def serve(self) -> None:
        """Accept and serve connections until stopped (and they end) or cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                for listener in self.listeners:
                    nursery.start_soon(self._accept, listener, nursery)
        finally:
            for listener in self.listeners:
                await listener.aclose()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return  # stop() closed the listener
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error(
                        "input %s: cannot accept: %s; pausing 1 s", self.config.name, exc.strerror
                    )
                    await trio.sleep(1)  # back-off, not synchronisation
                continue
            peer = _peer_name(stream.socket)
            if len(self._connections) >= self.config.max_connections and not self._make_room(peer):
                self.counters.add("refused_connections")
                self._say_full(peer, "refused it")
                await trio.aclose_forcefully(stream)
                continue
            connection = Connection(peer, trio.current_time())
            self._connections[connection] = None
            nursery.start_soon(self._serve_connection, stream, connection)

    def _make_room(self, newcomer: str) -> bool:
        """Close the connection that has been idle longest, if it has been idle
        for EVICT_IDLE, to make room for ``newcomer``; False if none has."""
        waiting = [c for c in self._connections if c.read_scope is not None and not c.closing]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.waiting_since)
        idle = trio.current_time() - oldest.waiting_since
        if idle < EVICT_IDLE:
            return False
        oldest.closing = "evicted"
        assert oldest.read_scope is not None
        oldest.read_scope.cancel()
        del self._connections[oldest]  # its slot is the newcomer's; its task ends at once
        self.counters.add("evicted_idle")
        self._say_full(newcomer, f"closed {oldest.peer}, idle for {idle:.0f} s, to make room")
        return True

    def _say_full(self, peer: str, what: str) -> None:
        self._full_log.log(
            log,
            logging.WARNING,
            "full",
            f"input {self.config.name}: {self.config.max_connections} connections open "
            f"(max_connections); a connection from {peer} came: {what}",
            trio.current_time(),
        )

    async def _serve_connection(self, stream: trio.SocketStream, connection: Connection) -> None:
        """The TLS handshake (if any) and the session, under the guard: whatever
        goes wrong closes this connection only (counted, logged), never the input.
        The close is bounded (a TLS peer that does not read must not hold up a stop)."""
        byte_stream: trio.SocketStream | ByteStream = stream
        try:
            if self.proxy is not None and not await self._proxied(stream, connection):
                return
            if self.tls is not None:
                ssl_stream = await self.tls.accept(stream, connection.peer)
                if ssl_stream is None:  # refused: logged and counted, nothing queued
                    return
                byte_stream = as_byte_stream(ssl_stream)
            self.counters.add("connections")
            await self._session(byte_stream, connection)
        except Exception as exc:
            self._fault(connection.peer, exc)
        finally:
            self._connections.pop(connection, None)
            await tls_aclose(byte_stream)

    async def _proxied(self, stream: trio.SocketStream, connection: Connection) -> bool:
        """Whether the connection is served: its PROXY header read, the client
        it names now its peer (:class:`ProxyGate`). The wait for the header is
        the connection's read (the stop and an eviction end it)."""
        assert self.proxy is not None
        with trio.CancelScope() as scope:
            connection.read_scope = scope
            try:
                header = await self.proxy.admit(stream, connection.peer)
            finally:
                connection.read_scope = None
        if scope.cancelled_caught or header is None:
            return False
        if header.source is not None:  # None: UNKNOWN, the balancer's own address stands
            connection.peer = client_peer(header.source)
        return True

    def _fault(self, peer: str, exc: Exception) -> None:
        """A session ended by an error nobody handled: count, one line (rate-limited)."""
        self.counters.add("session_errors")
        ours = isinstance(exc, RelayError)  # a protocol error we raised on purpose
        self._fault_log.log(
            log,
            logging.ERROR,
            type(exc).__name__,
            f"input {self.config.name}: connection from {peer} closed on an error: "
            f"{type(exc).__name__}: {exc}"
            + ("" if ours else " (a bug in relay; the traceback is logged at debug level)"),
            trio.current_time(),
        )
        if not ours:
            log.debug("input %s: the error's traceback:", self.config.name, exc_info=exc)

    async def _session(
        self, stream: trio.SocketStream | ByteStream, connection: Connection
    ) -> None:
        """Frames in, batches queued, until the connection ends (or the stop)."""
        peer = connection.peer
        config = self.config
        counters = self.counters
        decoder = FrameDecoder(
            framing=config.framing, max_frame=config.max_message_size, oversize=config.oversize
        )
        put = self.router.put
        name = config.name
        try:
            while True:
                data = await self._read(stream, connection)
                # Clean octet-counted frames stay one buffer (frames is None):
                # a TCP output sends it as it came, nothing slices it per message.
                frames, wire, count, nbytes = decoder.receive_batch(data)
                if count:
                    batch = Batch(
                        frames,
                        received=time.time(),
                        peer=peer,
                        input=name,
                        octet_counted=wire,
                        nbytes=nbytes,
                        count=count,
                    )
                    counters.add("received", count)
                    counters.add("bytes", batch.nbytes)
                    try:
                        limited: Batch | None = batch
                        if self.limit is not None:
                            limited = await self._limited(batch, self.limit)
                        if limited is not None:
                            await put(limited, keep_if_cancelled=True)
                    except trio.Cancelled:  # stopping while the queues are full
                        counters.add("kept_at_stop", count)
                        log.info(
                            "input %s: %d messages from %s, read while the spools were full, "
                            "are kept past their budget and saved with them at the stop",
                            name,
                            count,
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

    async def _limited(self, batch: Batch, rate_limit: InputLimit) -> Batch | None:
        """``batch`` within the input's rate limit (:meth:`InputLimit.apply`); the
        stop while it waits keeps the batch: it was read, and plain TCP cannot
        ask for it again."""
        try:
            return await rate_limit.apply(batch)
        except trio.Cancelled:
            self.router.keep_at_stop(batch)
            raise

    async def _read(self, stream: trio.SocketStream | ByteStream, connection: Connection) -> bytes:
        """The next read, ``b""`` at the end: EOF, a broken connection, the idle
        timeout or an eviction, or (at stop) once the sender has been quiet for
        STOP_IDLE."""
        try:
            if self.stopping.is_set():
                return await _read_until_quiet(stream)
            return await self._receive(stream, connection)
        except trio.BrokenResourceError as exc:
            log.info(
                "input %s: connection from %s broken: %s",
                self.config.name,
                connection.peer,
                exc.__cause__ or exc,
            )
            return b""

    async def _receive(
        self, stream: trio.SocketStream | ByteStream, connection: Connection
    ) -> bytes:
        """The next read, within the idle timeout; when the stop begins while
        waiting, the rest of the buffered data instead (``b""`` once the
        connection is quiet)."""
        # Only the wait for data is cancelled, never a put: trio's receive_some
        # either returns data or is cancelled having taken none.
        timeout = self.config.idle_timeout
        connection.waiting_since = now = trio.current_time()
        with trio.CancelScope(deadline=now + timeout if timeout else math.inf) as scope:
            connection.read_scope = scope
            try:
                return await stream.receive_some(RECV_SIZE)
            finally:
                connection.read_scope = None
        if self.stopping.is_set():
            return await _read_until_quiet(stream)
        if not connection.closing:  # not evicted: the idle timeout
            connection.closing = "idle"
            self.counters.add("idle_timeouts")
            self._idle_log.log(
                log,
                logging.INFO,
                "idle",
                f"input {self.config.name}: closed the connection from {connection.peer}: "
                f"it sent nothing for {timeout:g} s (idle_timeout)",
                trio.current_time(),
            )
        return b""


async def _read_until_quiet(stream: trio.SocketStream | ByteStream) -> bytes:
    """At stop: what the sender already wrote, ``b""`` after STOP_IDLE of quiet."""
    with trio.move_on_after(STOP_IDLE):
        return await stream.receive_some(RECV_SIZE)
    return b""


def _peer_name(sock: trio.socket.SocketType) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "?"
    return host_port(peer[0], peer[1])
