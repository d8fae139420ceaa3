"""``relay send``: a small client that sends numbered test messages.

Each message is RFC 5424 with ``seq=<n>`` (counting from ``start``) first in
its MSG, padded to the requested size, so that an operator can push a known
stream through a pipeline and check at the far end that every number arrived
once.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import AsyncIterator

import trio

from relay.config import Endpoint
from relay.message import format_received
from relay.protocol.framing import encode_lines, encode_octet_counted
from relay.protocol.proxy import encode_v1, encode_v2

# Messages built and written per write: amortises the await and the syscall.
CHUNK = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class SendPlan:
    endpoint: Endpoint
    count: int = 1
    rate: float = 0.0  # messages per second over all connections; 0 = as fast as possible
    size: int = 0  # total bytes of each message; 0 = no padding
    connections: int = 1
    framing: str = "octet-counting"  # or "non-transparent" (LF); TCP only
    start: int = 0
    text: str = ""
    app_name: str = "relay-send"
    # A PROXY protocol header first on each TCP connection, naming this client
    # (address, port) as a balancer would; proxy_version 1 (text) or 2 (binary).
    proxy_from: tuple[str, int] | None = None
    proxy_version: int = 2


def build_messages(plan: SendPlan, first: int, last: int) -> list[bytes]:
    """Messages numbered ``first`` to ``last - 1``."""
    header = "<13>1 {ts} {host} {app} {pid} - - ".format(
        ts=format_received(time.time()),
        host=socket.gethostname() or "-",
        app=plan.app_name,
        pid=os.getpid(),
    ).encode()
    text = (" " + plan.text).encode() if plan.text else b""
    out = []
    for seq in range(first, last):
        message = b"%bseq=%d%b" % (header, seq, text)
        if len(message) < plan.size:
            message += b" " + b"x" * (plan.size - len(message) - 1)
        out.append(message)
    return out


async def send(plan: SendPlan) -> float:
    """Send everything in ``plan``; return the seconds it took."""
    started = trio.current_time()
    shares = _split(plan.start, plan.count, max(1, plan.connections))
    async with trio.open_nursery() as nursery:
        for first, last in shares:
            nursery.start_soon(_send_share, plan, first, last)
    return trio.current_time() - started


def _split(start: int, count: int, parts: int) -> list[tuple[int, int]]:
    size, extra = divmod(count, parts)
    out, first = [], start
    for i in range(parts):
        last = first + size + (1 if i < extra else 0)
        if last > first:
            out.append((first, last))
        first = last
    return out


async def _send_share(plan: SendPlan, first: int, last: int) -> None:
    endpoint = plan.endpoint
    rate = plan.rate / max(1, plan.connections) if plan.rate else 0.0
    if endpoint.scheme == "tcp":
        stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        encode = encode_octet_counted if plan.framing == "octet-counting" else encode_lines
        try:
            if plan.proxy_from is not None:
                await stream.send_all(proxy_header(plan, stream.socket.getpeername()))
            async for messages in _paced(plan, first, last, rate):
                await stream.send_all(encode(messages))
        finally:
            await stream.aclose()
        return
    sock = await _datagram_socket(endpoint)
    with sock:
        async for messages in _paced(plan, first, last, rate):
            for message in messages:
                await sock.send(message)


def proxy_header(plan: SendPlan, destination: tuple[str, int]) -> bytes:
    """The PROXY header of a connection to ``destination`` (address, port);
    ValueError if the two are not of one family (a header cannot mix them)."""
    assert plan.proxy_from is not None
    where = (destination[0], destination[1])
    if ":" in where[0] and "." in where[0] and ":" not in plan.proxy_from[0]:
        where = (where[0].rpartition(":")[2], where[1])  # ::ffff:a.b.c.d: IPv4 after all
    if plan.proxy_version == 1:
        return encode_v1(plan.proxy_from, where)
    return encode_v2(plan.proxy_from, where)


async def _datagram_socket(endpoint: Endpoint) -> trio.socket.SocketType:
    if endpoint.scheme == "unix":
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await sock.connect(endpoint.path)
        return sock
    infos = await trio.socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_DGRAM)
    family, type_, proto, _, address = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    await sock.connect(address)
    return sock


async def _paced(plan: SendPlan, first: int, last: int, rate: float) -> AsyncIterator[list[bytes]]:
    """Chunks of messages, spaced so that ``rate`` messages per second go out."""
    chunk = CHUNK if not rate else max(1, min(CHUNK, int(rate / 100)))
    start = trio.current_time()
    sent = 0
    for low in range(first, last, chunk):
        high = min(last, low + chunk)
        if rate:
            due = start + sent / rate
            if due > trio.current_time():
                await trio.sleep_until(due)  # pacing, not synchronisation
        yield build_messages(plan, low, high)
        sent += high - low
