"""TCP output: octet-counted RFC 5424 frames (RFC 6587 §3.4.1) to one upstream.

A batch is acked once ``send_all`` returned: it is in our kernel's socket
buffer. Plain TCP cannot promise more (RELP can); what it can do is not write
into a connection the peer already closed. An idle collector or a load
balancer that closed the connection leaves it in CLOSE_WAIT, and the first
write after that "succeeds" into the void (rsyslog#3929). So before each
write we look, without blocking, whether the peer has closed or reset the
connection, and reconnect first if it has.
"""

from __future__ import annotations

import logging
import socket

import trio

from relay.message import Batch
from relay.outputs.base import Output

log = logging.getLogger("relay.output")

# A connect that takes longer than this is a failure to retry (with back-off).
CONNECT_TIMEOUT = 10.0


class PeerClosed(ConnectionError):
    """The upstream closed the connection while we were not writing."""


class TcpOutput(Output):
    stream: trio.SocketStream | None = None
    _probe: socket.socket | None = None

    async def deliver(self, batches: list[Batch]) -> None:
        if self.stream is None or self._peer_closed():
            await self.reset()
            await self._connect()
        assert self.stream is not None
        if len(batches) == 1:
            data = batches[0].octet_counted()
        else:
            data = b"".join([batch.octet_counted() for batch in batches])
        await self.stream.send_all(data)

    async def _connect(self) -> None:
        endpoint = self.config.endpoint
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.stream = stream
        # A second handle on the same socket, for the non-blocking peek below.
        self._probe = socket.fromfd(
            stream.socket.fileno(), stream.socket.family, socket.SOCK_STREAM
        )
        log.info("output %s: connected to %s", self.name, endpoint.url)

    def _peer_closed(self) -> bool:
        """Whether the upstream closed or reset the connection (never blocks)."""
        assert self._probe is not None
        try:
            data = self._probe.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            log.info("output %s: connection lost while idle: %s", self.name, exc.strerror)
            return True
        if data:  # a syslog collector sends nothing; ignore what it did send
            return False
        log.info("output %s: upstream closed the connection; reconnecting", self.name)
        return True

    async def reset(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await stream.aclose()
