"""TCP output: octet-counted RFC 5424 frames (RFC 6587 §3.4.1) to one or more upstreams.

Plain TCP has no acknowledgement a sender can see: ``send_all`` returning
means the bytes are in our kernel, and a collector that dies takes what sat in
either kernel's buffers and in its own memory with it (rsyslog#3929). So a
written batch is not acked at once. It stays in the spool, unconfirmed, until
the peer's kernel has acknowledged its bytes (our send queue no longer holds
them, TIOCOUTQ) and CONFIRM_AGE has passed for the collector to take it in;
when more than RESEND_BYTES are unconfirmed the oldest are confirmed anyway,
to bound memory. When a connection is lost, everything unconfirmed is written
again (counted as ``resent``): at-least-once, duplicates bounded by that
window (relay/outputs/window.py keeps it; this module decides when a write is
safe). RELP removes the guesswork.

Before each write we also look, without blocking, whether the peer has closed
or reset an idle connection (CLOSE_WAIT after a load balancer's idle timeout),
and reconnect first if it has.

With several targets (``targets = [...]``), :mod:`relay.policy.targets`
decides which one takes the next batch (failover or round-robin); this module
only moves bytes and reports back. A batch whose write fails is written again,
whole, to the next target, after the window of unconfirmed batches (see
above): those are the duplicates a switch can cause.
Connections to targets that come back are opened in the background, so a dead
or slow target never holds up delivery to a live one.

A host name is looked up at every connect, so a DNS change takes effect at the
next connection. When the lookup fails, the addresses of the last lookup that
worked are used: a DNS outage must not stop delivery to a collector that is
still there.
"""

from __future__ import annotations

import fcntl
import logging
import random
import socket
import struct
import termios
from typing import Any

import trio

from relay.config import Endpoint, OutputConfig
from relay.message import Batch, octet_counted_wire
from relay.outputs.delivery import RETRYABLE, Output, describe, report_targets
from relay.outputs.window import Window, WindowLost
from relay.policy.backoff import Backoff
from relay.policy.targets import (
    Event,
    State,
    TargetSelector,
)
from relay.tls.stream import VERDICT_WAIT, ByteStream, silent_refusal
from relay.tls.stream import aclose as tls_aclose

log = logging.getLogger("relay.output")

# A connect that takes longer than this is a failure to retry (with back-off).
CONNECT_TIMEOUT = 10.0
# With several addresses, the next is tried when the one before has not
# connected within this long (RFC 8305 §5 recommends 250 ms; so does trio).
HAPPY_EYEBALLS_DELAY = 0.25
# A lookup not answered by then counts as failed, and the last known addresses
# are used: glibc's resolver waits 5 s for a name server before it tries the
# next one (resolv.conf(5), "timeout"), so a longer wait is a dead server.
RESOLVE_TIMEOUT = 5.0
# A written batch is confirmed once the peer's kernel acknowledged it and this
# long has passed: time for a live collector to read it and write it out.
CONFIRM_AGE = 1.0
# At most this much is kept for writing again after a lost connection: more
# than both kernels' socket buffers hold on a fast link (what rsyslog#3929
# loses), and never more than a quarter of the spool's memory (in bytes) or
# half of it (in messages), so that the window never pushes new traffic to disk.
RESEND_BYTES = 16 * 1024 * 1024


class AllTargetsDown(ConnectionError):
    """No target of a multi-target output took the batch."""


class _Connection:
    """An open connection to one target, and a second handle on its socket
    for the non-blocking peek that finds a peer close."""

    __slots__ = ("address", "closed", "plain", "probe", "stream", "written")

    def __init__(
        self, stream: trio.SocketStream, address: str, wrapped: ByteStream | None = None
    ) -> None:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # What batches are written to: the socket, or the TLS stream over it.
        self.stream: trio.SocketStream | ByteStream = wrapped or stream
        self.plain = wrapped is None  # bytes may go straight to the socket (write_nowait)
        self.address = address
        self.probe = socket.fromfd(stream.socket.fileno(), stream.socket.family, socket.SOCK_STREAM)
        self.written = 0  # bytes written on it
        self.closed = False  # closed by us, in order (the kernel still sends what it holds)

    def write_nowait(self, data: bytes) -> int:
        """Write what the socket takes now, without trio (plain TCP only):
        how many bytes went. OSError as trio's send would raise it."""
        try:
            return self.probe.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def acked_through(self, end: int) -> bool:
        """Whether the peer's kernel acknowledged our bytes up to ``end``.

        Over TLS ``written`` counts plaintext and TIOCOUTQ ciphertext, which is
        larger (record headers, MACs, the handshake's own bytes): the unsent
        ciphertext is subtracted from fewer plaintext bytes, so a batch is
        confirmed later than it could be, never earlier. Conservative; kept.
        """
        if self.closed:
            return True
        try:
            raw = fcntl.ioctl(self.probe.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            unsent: int = struct.unpack("i", raw)[0]
        except OSError:
            return False
        return self.written - unsent >= end

    def peer_closed(self) -> str:
        """Why the upstream closed or reset the connection; "" if it did not (never blocks)."""
        try:
            data = self.probe.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return ""
        except OSError as exc:
            return f"connection lost while idle: {exc.strerror}"
        if data:  # a syslog collector sends nothing; ignore what it did send
            return ""
        return "upstream closed the connection"

    async def aclose(self) -> None:
        self.closed = True
        self.probe.close()
        await tls_aclose(self.stream)


class TcpOutput(Output):
    def __init__(self, config: OutputConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.targets = TargetSelector(
            config.all_targets, config.mode, Backoff(maximum=config.retry_max)
        )
        self._connections: dict[int, _Connection] = {}
        self._addresses: dict[str, list[str]] = {}  # host -> its last lookup that worked
        self._unresolvable: set[str] = set()  # hosts whose lookups fail (one line per episode)
        # Each write is a flight: safe once the peer's kernel acked its bytes
        # and confirm_age passed. No answer comes to count that down: confirm()
        # below checks, and acks it itself.
        settings = self.spool.settings
        self.window: Window[_Connection] = Window(
            self.spool,
            self.counters,
            max_bytes=min(RESEND_BYTES, settings.max_bytes // 4),
            max_messages=settings.max_messages // 2,
        )
        self._last: _Connection | None = None  # the connection the last batch went on
        self.confirm_age = CONFIRM_AGE

    async def aclose(self) -> None:
        """Stopping, not failing: what the window holds stays in the spool (and is
        saved); nothing was lost, so nothing is "resent". Runs after background
        connects are stopped, so none is left open."""
        self.window.release()
        for index in list(self._connections):
            await self._close(index)
            self.targets.closed(index)

    async def deliver(self, batches: list[Batch]) -> None:
        data = octet_counted_wire(batches)
        failed: set[int] = set()  # the targets that failed this batch
        last: BaseException | None = None
        while True:
            plan = self.targets.plan(trio.current_time(), failed)
            for other in plan.probe:
                await self._probe(other)
            index = plan.write if plan.write is not None else plan.connect
            if index is None:
                # ``last`` holds its traceback, and so this frame: without the
                # del, each failed call would leave ``data`` (up to SEND_BYTES)
                # in a reference cycle until the cyclic GC's rare full
                # collection (measured: 6 MiB held, 7 MiB found by
                # gc.collect(), after a few seconds with the collector down).
                del data
                raise self._all_down(last)
            try:
                if plan.write is None:
                    await self._connect(index)
                elif await self._idle_closed(index):
                    self._rewind_if_lost()
                else:
                    connection = self._connections[index]
                    try:
                        await self._write(connection, data)
                    except RETRYABLE:
                        # Part of it may have arrived: writing it again may
                        # duplicate it, like the window (counted alike).
                        self.window.resent(batches)
                        raise
                    connection.written += len(data)
                    self._last = connection
                    await self._delivered(index)
                    return
            except RETRYABLE as exc:
                await self._close(index, lost=True)
                self._target_failed(index, describe(exc))
                failed.add(index)
                last = exc
                self._rewind_if_lost()

    async def _write(self, connection: _Connection, data: bytes) -> None:
        """Write ``data``: straight to the socket when it takes it all (no
        trio round: most writes of a trickle, or of 1 MiB on a fast link;
        the delivery loop yields before its next take), through the stream
        for the rest."""
        sent = connection.write_nowait(data) if connection.plain else 0
        if sent < len(data):
            await connection.stream.send_all(memoryview(data)[sent:] if sent else data)
            self.yielded = True

    def _rewind_if_lost(self) -> None:
        """The window was just lost: what is written next must be the spool's
        head again (the window's batches), not the batches in hand after it."""
        if self.window.moved():
            raise WindowLost

    async def _idle_closed(self, index: int) -> bool:
        """Whether the peer closed the connection to ``index`` after it carried batches
        (then it is dropped, to be reconnected: idle timeouts are normal).

        A connection closed before its first batch is a failure of the target
        (ConnectionResetError), so that a collector that accepts and hangs up at
        once costs a back-off, not a busy loop.
        """
        connection = self._connections[index]
        closed = connection.peer_closed()
        if not closed:
            return False
        if not connection.written:  # no batch went over it
            if self.config.tls is not None:  # TLS 1.3: the server's verdict on us
                endpoint = self.targets.endpoint(index)
                raise self.tls_failed(silent_refusal(self.config.tls, endpoint.address))
            raise ConnectionResetError(closed)
        log.info("output %s: %s: %s; reconnecting", self.name, self._url(index), closed)
        await self._close(index, lost=True)
        self.targets.closed(index)
        return True

    async def _delivered(self, index: int) -> None:
        self._report(self.targets.delivered(index))
        for other in list(self._connections):  # failover: the other connections are done
            if self.targets.state(other) is not State.UP:
                await self._close(other)

    def _all_down(self, last: BaseException | None) -> BaseException:
        if len(self.targets.targets) == 1 and last is not None:
            return last  # the output's own line says it all ("cannot connect to ...")
        # Each target's reason has its own "down" line; this one stays the same
        # while the outage lasts, so the output logs it once.
        urls = ", ".join(t.endpoint.url for t in self.targets.targets)
        return AllTargetsDown(f"all targets down ({urls})")

    # -- connecting ------------------------------------------------------------

    async def _connect(self, index: int) -> None:
        """Connect to target ``index`` (raises what the attempt raised)."""
        self.targets.connecting(index)
        try:
            connection = await self._open(self.targets.endpoint(index))
        except BaseException:
            self.targets.closed(index)  # no longer connecting; the caller says why
            raise
        self._connections[index] = connection
        log.info("output %s: connected to %s (%s)", self.name, self._url(index), connection.address)
        self._report(self.targets.connected(index))

    async def _probe(self, index: int) -> None:
        """Connect to ``index`` in the background (the output's nursery)."""
        assert self._nursery is not None  # deliver() runs only inside run()
        self.targets.connecting(index)  # at once, so the next plan does not probe it again
        self._nursery.start_soon(self._try_connect, index)

    async def _try_connect(self, index: int) -> None:
        """Connect to ``index``; a failure marks it down, and is not raised."""
        try:
            await self._connect(index)
        except RETRYABLE as exc:
            self._target_failed(index, describe(exc))

    async def _open(self, endpoint: Endpoint) -> _Connection:
        addresses = await self._resolve(endpoint.host, endpoint.port)
        with trio.fail_after(CONNECT_TIMEOUT):
            stream, address = await _connect_first(addresses, endpoint.port)
        # Closes the stream if it fails. A collector never writes to us: wait
        # for a TLS 1.3 server's verdict on our certificate before writing.
        wrapped = await self.wrap_tls(stream, endpoint, verdict_wait=VERDICT_WAIT)
        try:
            return _Connection(stream, address, None if wrapped is stream else wrapped)
        except OSError:  # out of file descriptors for the second handle
            await tls_aclose(wrapped)
            raise

    async def _resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``: looked up now, or the last ones that were.

        Raises OSError only if the lookup fails and ``host`` never resolved.
        """
        reason = ""
        infos = []
        with trio.move_on_after(RESOLVE_TIMEOUT):
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:  # gaierror; a name IDNA cannot encode
                reason = (isinstance(exc, OSError) and exc.strerror) or str(exc)
                reason = reason or type(exc).__name__
        addresses = list(dict.fromkeys(_numeric_host(info[4]) for info in infos))
        if addresses:
            if host in self._unresolvable:
                self._unresolvable.discard(host)
                log.warning(
                    "output %s: %s resolves again (%s)", self.name, host, ", ".join(addresses)
                )
            self._addresses[host] = addresses
            return addresses
        reason = reason or "timed out"
        self.counters.add("dns_failures")
        known = self._addresses.get(host)
        if host not in self._unresolvable:
            self._unresolvable.add(host)
            log.warning(
                "output %s: cannot resolve %s (%s); %s",
                self.name,
                host,
                reason,
                f"using its last known addresses {', '.join(known)}"
                if known
                else "no earlier address known",
            )
        if known is None:
            raise OSError(f"cannot resolve {host}: {reason}")
        return known

    # -- target state --------------------------------------------------------

    def _target_failed(self, index: int, reason: str) -> None:
        self.counters.add("target_failures")
        self._report(self.targets.failed(index, trio.current_time(), reason, random.random()))

    def _report(self, events: list[Event]) -> None:
        report_targets(self.name, events, len(self.targets.targets))

    def _url(self, index: int) -> str:
        return self.targets.endpoint(index).url

    async def _close(self, index: int, *, lost: bool = False) -> None:
        """Close the connection to ``index``; ``lost``: it failed, so what it may
        not have carried is written again."""
        connection = self._connections.pop(index, None)
        if connection is not None:
            await connection.aclose()
        if lost:
            self._forget_window()

    async def reset(self) -> None:
        for index in list(self._connections):
            await self._close(index, lost=True)
            self.targets.closed(index)
        self._forget_window()

    # -- the window of written, unconfirmed batches ------------------------------

    def written(self, batches: list[Batch], now: float) -> None:
        last = self._last
        assert last is not None
        # awaiting=1: never safe by itself; only confirm() (or a bound) acks it.
        self.window.written(batches, now, last, end=last.written, awaiting=1)

    def confirm(self, now: float) -> None:
        window = self.window
        spool = self.spool
        # The window must never stop delivery: when it fills the spool's memory
        # while more waits behind it, it is confirmed now (judged on the spool
        # as it is before the acks below).
        pressed = bool(window.batches) and spool.memory_full()
        queued = len(spool)
        safe = 0
        lost = False
        for flight in window.flights():
            connection = flight.via
            if not connection.closed and connection.peer_closed():
                # The collector went away with our bytes possibly unread: write
                # them again. (The connection itself is dropped at the next write.)
                lost = True
                break
            if now - flight.at < self.confirm_age or not connection.acked_through(flight.end):
                break
            safe += 1
        window.confirm_oldest(safe)
        if lost:
            self._forget_window()
        if pressed and queued > window.messages:
            window.confirm_all()

    def _forget_window(self) -> None:
        """A connection was lost: everything unconfirmed is written again."""
        messages = self.window.lost()
        if messages:
            log.warning(
                "output %s: connection lost; writing the last %d messages again (they may not "
                "have reached the collector; it may see them twice)",
                self.name,
                messages,
            )


async def _connect_first(addresses: list[str], port: int) -> tuple[trio.SocketStream, str]:
    """Connect to the first of ``addresses`` that answers, starting the next attempt
    whenever one fails or has not connected within HAPPY_EYEBALLS_DELAY (RFC 8305),
    as ``trio.open_tcp_stream`` does for a host name; raises the last failure."""
    winner: list[tuple[trio.SocketStream, str]] = []
    errors: list[OSError] = []

    async def attempt(address: str, done: trio.Event) -> None:
        try:
            stream = await trio.open_tcp_stream(address, port)
        except OSError as exc:
            errors.append(exc)
            done.set()
            return
        if winner:  # another attempt won meanwhile
            await stream.aclose()
            return
        winner.append((stream, address))
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for address in addresses:
            done = trio.Event()
            nursery.start_soon(attempt, address, done)
            with trio.move_on_after(HAPPY_EYEBALLS_DELAY):
                await done.wait()
    if winner:
        return winner[0]
    raise errors[-1]


def _numeric_host(address: tuple[Any, ...]) -> str:
    """The host part of a socket address as a string ``open_tcp_stream`` takes back."""
    host = str(address[0])
    if len(address) == 4 and address[3]:  # IPv6 with a scope (a link-local address)
        return f"{host}%{address[3]}"
    return host
