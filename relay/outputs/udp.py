"""UDP output (RFC 5426): one datagram per message, best effort.

UDP tells us nothing about delivery, so a batch is acked once every datagram
was handed to the kernel. A message longer than the largest datagram is
truncated (at a UTF-8 boundary) and counted, never split into several.
"""

from __future__ import annotations

import socket

import trio

from relay.message import Batch
from relay.outputs.delivery import Output
from relay.protocol.framing import utf8_cut

MAX_DATAGRAM = 65_507


class UdpOutput(Output):
    sock: socket.socket | None = None

    async def deliver(self, batches: list[Batch]) -> None:
        if self.sock is None:
            await self._connect()
        sock = self.sock
        assert sock is not None
        send = sock.send
        for batch in batches:
            for message in batch.messages:
                if len(message) > MAX_DATAGRAM:
                    message = utf8_cut(message, MAX_DATAGRAM)
                    self.counters.add("truncated")
                refused = 0
                while True:
                    try:
                        send(message)
                        break
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(sock)
                    except ConnectionRefusedError:
                        # An ICMP "port unreachable" for an earlier datagram fails
                        # this send, and this datagram was not sent: try it once
                        # more, then count it lost (UDP has no delivery to wait for).
                        refused += 1
                        if refused > 1:
                            self.counters.add("dropped_unreachable")
                            break
        await trio.lowlevel.checkpoint()

    async def _connect(self) -> None:
        endpoint = self.config.endpoint
        infos = await trio.socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_DGRAM)
        family, type_, proto, _, address = infos[0]
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    async def reset(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
