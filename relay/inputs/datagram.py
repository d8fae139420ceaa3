"""The UDP input (RFC 5426), and what the local datagram input (inputs/local.py) shares with it.

One datagram is one message. The receive task only receives and queues: when
the socket is readable it drains the waiting datagrams without awaiting (up to
DRAIN_LIMIT of them or DRAIN_BYTES, whichever comes first), groups them by
sender into batches and hands them on without waiting (``Router.put_nowait``).
A datagram input cannot push back on its senders, so when an output's spool
is full the batch is dropped for that output and counted, instead of stalling
the loop while the kernel drops silently.

Each datagram is read into one reusable buffer and copied out at its size.
recvfrom(65508) allocated 64 KiB per datagram and shrank it in place: glibc's
heap was then left with holes just short of the next 64 KiB request, and
under a flood of random sizes RSS grew about 11% past what the spools held
(29 MiB over a 256 MiB queue_max_bytes; 7 MiB with exact sizes). The copy
costs about 0.05 us for 300 bytes, 5 us for 60 KB.
"""

from __future__ import annotations

import errno
import logging
import socket
import time

import trio

from relay.config import InputConfig, host_port
from relay.errors import ADDRESS_IN_USE, StartupError
from relay.inputs.limit import for_input
from relay.message import Batch
from relay.protocol.framing import OversizePolicy, utf8_cut
from relay.service.timer import Timer
from relay.spool.router import Router
from relay.stats import Counters, LogLimit

log = logging.getLogger("relay.input")

# Datagrams taken per wake-up before yielding to other tasks: large enough to
# amortise the await, small enough that TCP connections still get their turn.
DRAIN_LIMIT = 1024
# ... and bytes: what one wake-up holds before it is queued, and so the size of
# the batch a spool may take past its memory budget. 1,024 datagrams of 300
# bytes stay under it; 1,024 of 64 KiB (a flood of large datagrams) would hold
# 64 MiB at once. One output write (outputs/delivery.py SEND_BYTES) is as large.
DRAIN_BYTES = 1024 * 1024
# The largest UDP payload over IPv4 (65,535 - 8 - 20).
MAX_DATAGRAM = 65_507
# After a wake-up that found only a few datagrams, the input lets the next
# ones gather for up to DEFER_MAX before it looks again, so that one wake-up
# (a trio scheduling round, a Batch, a spool put) carries several: at 5,000
# msg/s each wake-up otherwise carries one or two. The wait is chosen so
# that, at the rate just seen, the socket's queue fills to a quarter at most
# (scheduling delays on a busy host take the rest; with half, senders at
# 5,000/s were blocked 0.7 s in 10 s, up to 7.7 ms at once, here): a
# unix sender blocks once net.unix.max_dgram_qlen datagrams wait (10 by
# kernel default, 512 under systemd), and local programs must never wait.
# Waits are whole multiples of DEFER_MIN: trio's timers are epoll's, which
# rounds up to the millisecond, so a shorter wait would last 1 ms anyway.
# When a quarter of the queue would fill sooner than that, the input does
# not wait (with the kernel's default of 10: above 2,500 msg/s).
DEFER_MAX = 0.002
DEFER_MIN = 0.001
# What the wait is planned for: a UDP socket's queue is not bounded in
# datagrams (a full buffer drops, it never blocks); plan as if it held this
# many. (The unix input, inputs/local.py, plans for the kernel's
# net.unix.max_dgram_qlen, and waits only when that is long, as under systemd.)
UDP_QUEUE = 256

# Linux's SO_RCVBUFFORCE (asm-generic/socket.h); the socket module lacks the name.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

COUNTERS = (
    "received",
    "bytes",
    "truncated",
    "dropped_oversize",
    # queueing failed on an error the input did not handle (a bug; logged)
    "handler_errors",
)
# Lines about such errors: one per kind per this many seconds.
FAULT_LOG_INTERVAL = 60.0


class DatagramInput:
    """A bound datagram socket feeding the router."""

    def __init__(self, config: InputConfig, router: Router, counters: Counters) -> None:
        self.config = config
        self.router = router
        self.counters = counters
        self.limit = for_input(config, counters)
        self.sock: socket.socket | None = None
        self.address: str = config.endpoint.url
        self._scope = trio.CancelScope()
        self._fault_log = LogLimit(FAULT_LOG_INTERVAL, "errors like it not logged")

    def open(self) -> None:
        """Create and bind the socket; StartupError with one clear line on failure."""
        endpoint = self.config.endpoint
        try:
            family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock = sock
            self._grow_rcvbuf(sock)
            if self.config.reuse_port:  # workers: the kernel spreads datagrams by sender
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((endpoint.host, endpoint.port))
            host, port = sock.getsockname()[:2]
            self.address = f"udp://{host_port(host, port)}"
            sock.setblocking(False)
        except OSError as exc:
            if self.sock is not None:
                self.sock.close()
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason = ADDRESS_IN_USE
            raise StartupError(
                f"input {self.config.name}: cannot listen on {endpoint.url}: {reason}"
            ) from None

    def _grow_rcvbuf(self, sock: socket.socket) -> None:
        want = self.config.rcvbuf
        try:  # root may exceed net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, want)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
        # Linux reports twice the usable size (it counts its bookkeeping).
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        level = logging.INFO if granted >= want else logging.WARNING
        hint = "" if granted >= want else " (raise net.core.rmem_max to get more)"
        log.log(
            level,
            "input %s: receive buffer %d bytes, asked for %d%s",
            self.config.name,
            granted,
            want,
            hint,
        )

    async def stop(self) -> None:
        """Stop receiving (what the kernel still holds is lost: datagrams are lossy)."""
        self._scope.cancel()

    async def serve(self) -> None:
        """Receive until stopped or cancelled."""
        with self._scope:
            await self._serve()

    def _fault(self, exc: Exception, count: int) -> None:
        report_fault(self.config.name, self.counters, self._fault_log, exc, f"{count} datagrams")

    async def _serve(self) -> None:
        sock = self.sock
        assert sock is not None
        name = self.config.name
        limit = self.config.max_message_size
        truncate = self.config.oversize is OversizePolicy.TRUNCATE
        recvfrom_into = sock.recvfrom_into
        counters = self.counters
        buffer = bytearray(MAX_DATAGRAM + 1)
        view = memoryview(buffer)
        # The deferral (DEFER_MAX): plan for a quarter of the queue.
        quarter = UDP_QUEUE / 4
        monotonic = time.monotonic
        last = monotonic()
        deferred = False
        timer = Timer()  # see relay/service/timer.py
        try:
            while True:
                if not deferred:
                    await trio.lowlevel.wait_readable(sock)
                groups: dict[object, list[bytes]] = {}
                nbytes = count = 0
                for _ in range(DRAIN_LIMIT):
                    try:
                        size, peer = recvfrom_into(buffer)
                    except BlockingIOError:
                        break
                    except OSError as exc:  # e.g. ICMP errors surfaced on the socket
                        log.debug("input %s: %s", name, exc)
                        continue
                    if size and buffer[size - 1] == 10:  # a trailer, not content
                        size -= 1  # (rsyslog drops it too)
                    if size > limit:
                        cut = oversize(view, size, limit, truncate, counters)
                        if cut is None:
                            continue
                        data, size = cut, len(cut)
                    elif size:
                        data = view[:size].tobytes()  # at its size: see the docstring
                    else:
                        continue
                    group = groups.get(peer)
                    if group is None:
                        groups[peer] = [data]
                    else:
                        group.append(data)
                    nbytes += size
                    count += 1
                    if nbytes >= DRAIN_BYTES:
                        break
                # At the rate seen since the last look, how long until a quarter
                # of the queue is full? That long (whole ms: trio's timers are
                # epoll's) the next ones may gather; nothing came: wait.
                now = monotonic()
                delay = quarter * (now - last) / count if count else 0.0
                delay = min(DEFER_MAX, delay // DEFER_MIN * DEFER_MIN)
                last = now
                deferred = delay > 0.0
                if groups:
                    self._queue(groups, count, nbytes)
                if deferred:
                    await timer.sleep(delay)
                # Otherwise wait_readable is the checkpoint: no other await here.
        finally:
            sock.close()
            timer.close()

    def _queue(self, groups: dict[object, list[bytes]], count: int, nbytes: int) -> None:
        """Hand one wake-up's datagrams on, a batch per sender."""
        name = self.config.name
        counters = self.counters
        put_nowait = self.router.put_nowait
        rate_limit = self.limit
        now = time.time()
        counters.add("received", count)
        counters.add("bytes", nbytes)
        try:
            for peer, messages in groups.items():
                batch = Batch(messages, received=now, peer=_peer_name(peer), input=name)
                if rate_limit is not None:
                    limited = rate_limit.admit(batch)
                    if limited is None:
                        continue
                    batch = limited
                put_nowait(batch)  # a full spool counts its own drops
        except Exception as exc:  # the guard: this wake-up's datagrams, not the input
            self._fault(exc, count)


def report_fault(
    name: str, counters: Counters, fault_log: LogLimit, exc: Exception, what: str
) -> None:
    """An error nobody handled while queueing ``what`` (e.g. "12 datagrams"):
    counted, logged (once a minute per kind), and the input goes on receiving."""
    counters.add("handler_errors")
    fault_log.log(
        log,
        logging.ERROR,
        type(exc).__name__,
        f"input {name}: {what} not queued after an error: {type(exc).__name__}: {exc}"
        " (a bug in relay; the traceback is logged at debug level)",
        trio.current_time(),
    )
    log.debug("input %s: the error's traceback:", name, exc_info=exc)


def oversize(
    view: memoryview, size: int, limit: int, truncate: bool, counters: Counters
) -> bytes | None:
    """A datagram of ``size`` bytes over ``limit``: cut at a UTF-8 boundary
    (``truncate``) or None (dropped); counted either way."""
    if not truncate:
        counters.add("dropped_oversize")
        return None
    counters.add("truncated")
    return utf8_cut(view[:size].tobytes(), limit)


def _peer_name(peer: object) -> str:
    if isinstance(peer, tuple):
        return host_port(peer[0], peer[1])
    return str(peer or "")
