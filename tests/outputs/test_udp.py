"""relay/outputs/udp.py over loopback."""

from __future__ import annotations

import socket

import trio

from relay.config import Endpoint, OutputConfig
from relay.message import Batch
from relay.outputs import delivery
from relay.outputs.udp import MAX_DATAGRAM, UdpOutput
from relay.spool.spool import memory_spool
from relay.stats import Counters


async def test_one_datagram_per_message_and_oversize_truncated() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        port = sink.getsockname()[1]
        config = OutputConfig("u", Endpoint("udp", "127.0.0.1", port))
        output = UdpOutput(config, memory_spool(), Counters("output", "u", delivery.COUNTERS))
        messages = [b"<13>seq=%d" % i for i in range(200)] + [b"x" * (MAX_DATAGRAM + 10)]
        output.spool.put_nowait(Batch(messages, received=0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output.run)
            with trio.fail_after(10):
                await output.spool.wait_empty()
            nursery.cancel_scope.cancel()
        got = [sink.recv(70_000) for _ in messages]
    assert got[:200] == messages[:200]
    assert got[200] == b"x" * MAX_DATAGRAM
    assert output.counters["truncated"] == 1
    assert output.counters["delivered"] == 201
