"""The UDP input (RFC 5426), and what the local datagram input (inputs/local.py) shares with it.

One datagram is one message. A thread receives them as they come and hands
them to trio in batches (relay/inputs/reader.py: once per HANDOVER, or every
DRAIN_LIMIT datagrams or DRAIN_BYTES, whichever comes first), grouped by
sender; the input hands each sender's batch on without waiting
(``Router.put_nowait``).
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

import trio

from relay.config import InputConfig, host_port
from relay.errors import ADDRESS_IN_USE, StartupError
from relay.inputs.limit import for_input
from relay.inputs.reader import RECVFROM, DatagramReader, Handed
from relay.message import Batch
from relay.protocol.framing import OversizePolicy
from relay.spool.router import Router
from relay.stats import Counters, LogLimit

log = logging.getLogger("relay.input")

# Datagrams handed to trio at once at most (reader.py): large enough to
# amortise the wake-up, small enough that TCP connections still get their turn.
DRAIN_LIMIT = 1024
# ... and bytes: what one hand-over holds before it is queued, and so the size of
# the batch a spool may take past its memory budget. 1,024 datagrams of 300
# bytes stay under it; 1,024 of 64 KiB (a flood of large datagrams) would hold
# 64 MiB at once. One output write (outputs/delivery.py SEND_BYTES) is as large.
DRAIN_BYTES = 1024 * 1024
# The largest UDP payload over IPv4 (65,535 - 8 - 20).
MAX_DATAGRAM = 65_507
# What a small datagram takes of the receive buffer, about (the kernel counts
# its bookkeeping too): how many the buffer holds, for the reader's naps.
DATAGRAM_TRUESIZE = 2048
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
        self.reader: DatagramReader | None = None  # while serving
        self.rcvbuf = 0  # bytes the receive buffer holds (granted at open)
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
        self.rcvbuf = granted
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
        reader = self.reader = DatagramReader(
            self.config.name,
            sock,
            RECVFROM,
            max_message_size=self.config.max_message_size,
            truncate=self.config.oversize is OversizePolicy.TRUNCATE,
            drain_limit=DRAIN_LIMIT,
            drain_bytes=DRAIN_BYTES,
            buffer_size=MAX_DATAGRAM + 1,
            kernel_queue=max(16, self.rcvbuf // DATAGRAM_TRUESIZE),
        )
        try:
            await reader.run(self._deliver)
        finally:
            sock.close()

    def _deliver(self, handed: Handed) -> None:
        """Hand one hand-over's datagrams on, a batch per sender."""
        handed.count_into(self.counters)
        name = self.config.name
        put_nowait = self.router.put_nowait
        rate_limit = self.limit
        try:
            for peer, messages in handed.groups.items():
                batch = Batch(messages, received=handed.received, peer=_peer_name(peer), input=name)
                if rate_limit is not None:
                    limited = rate_limit.admit(batch)
                    if limited is None:
                        continue
                    batch = limited
                put_nowait(batch)  # a full spool counts its own drops
        except Exception as exc:  # the guard: this hand-over's datagrams, not the input
            self._fault(exc, handed.count)


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


def _peer_name(peer: object) -> str:
    if isinstance(peer, tuple):
        return host_port(peer[0], peer[1])
    return str(peer or "")
