"""relay/inputs/http.py's sessions on trio memory streams, h11's client on the other end.

The order of things (the answer only after the put and the fsync) and the
timeouts (on trio's virtual clock) are checked here; curl against a relay
process is tests/interop/test_http_input.py.
"""

from __future__ import annotations

import json
from typing import cast

import h11
import trio
import trio.testing

from relay.config import Endpoint, InputConfig
from relay.inputs import http
from relay.inputs.tcp import Connection
from relay.message import Batch
from relay.outputs import delivery
from relay.spool.router import Route, Router
from relay.spool.spool import Spool, memory_spool
from relay.stats import Counters
from relay.tls.stream import ByteStream

BODY = b'{"message": "seq=1"}\n{"message": "seq=2"}\n'


def make_input(spool: Spool) -> http.HttpInput:
    config = InputConfig("api", Endpoint("http", "127.0.0.1", 0))
    router = Router([Route(spool, Counters("output", "o", delivery.COUNTERS))])
    return http.HttpInput(config, router, Counters("input", "api", http.COUNTERS))


def request(body: bytes = BODY, target: bytes = b"/v1/ingest") -> bytes:
    client = h11.Connection(h11.CLIENT)
    headers = [(b"host", b"relay"), (b"content-length", str(len(body)).encode())]
    head = client.send(h11.Request(method=b"POST", target=target, headers=headers)) or b""
    return (
        head + (client.send(h11.Data(data=body)) or b"") + (client.send(h11.EndOfMessage()) or b"")
    )


async def responses(stream: trio.abc.Stream, count: int) -> list[tuple[int, dict[str, object]]]:
    """Read ``count`` answers (status, JSON body) with h11's client."""
    client = h11.Connection(h11.CLIENT)
    found: list[tuple[int, dict[str, object]]] = []
    status, body = 0, b""
    _sent(client)
    while len(found) < count:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status, body = event.status_code, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            found.append((status, json.loads(body)))
            if len(found) < count:
                client.start_next_cycle()
                _sent(client)
        elif isinstance(event, h11.ConnectionClosed):
            break
    return found


def _sent(client: h11.Connection) -> None:
    """h11's client reads an answer only to a request it sent (the real ones
    were sent on their own): this one is never written."""
    headers = [(b"host", b"relay"), (b"content-length", b"0")]
    client.send(h11.Request(method=b"POST", target=b"/", headers=headers))
    client.send(h11.EndOfMessage())


def start(nursery: trio.Nursery, http_input: http.HttpInput) -> trio.abc.Stream:
    client, server = trio.testing.memory_stream_pair()
    connection = Connection("127.0.0.1:5555", trio.current_time())
    nursery.start_soon(http_input._session, cast(ByteStream, server), connection)
    return client


async def test_the_200_comes_only_once_the_put_and_the_fsync_returned() -> None:
    spool = memory_spool()
    http_input = make_input(spool)
    router = http_input.router
    put_gate, durable_gate = trio.Event(), trio.Event()
    order: list[str] = []
    real_put = router.put

    async def gated_put(batch: Batch, *, keep_if_cancelled: bool = False) -> None:
        await put_gate.wait()
        await real_put(batch, keep_if_cancelled=keep_if_cancelled)
        order.append("queued")

    async def gated_durable() -> None:
        await durable_gate.wait()
        order.append("durable")

    router.put = gated_put  # type: ignore[method-assign]
    router.wait_durable = gated_durable  # type: ignore[method-assign]

    async def client(stream: trio.abc.Stream) -> None:
        await stream.send_all(request())
        answer = await responses(stream, 1)
        order.append(f"answered {answer[0][0]}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client, start(nursery, http_input))
        await trio.testing.wait_all_tasks_blocked()
        assert order == [] and len(spool) == 0
        put_gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["queued"] and len(spool) == 2
        durable_gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["queued", "durable", "answered 200"]
        nursery.cancel_scope.cancel()


async def test_keep_alive_requests_each_get_their_answer() -> None:
    spool = memory_spool()
    http_input = make_input(spool)
    async with trio.open_nursery() as nursery:
        stream = start(nursery, http_input)
        await stream.send_all(request() + request(b"[]") + request(target=b"/other"))
        answers = await responses(stream, 3)
        assert [status for status, _ in answers] == [200, 200, 404]
        assert [m for b in spool.peek(1 << 20) for m in b.messages] == [
            b"<13>1 - - - - - - seq=1",
            b"<13>1 - - - - - - seq=2",
        ]
        nursery.cancel_scope.cancel()


async def test_a_client_that_trickles_gets_408_and_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spool = memory_spool()
    http_input = make_input(spool)
    data = request()
    async with trio.open_nursery() as nursery:
        stream = start(nursery, http_input)
        start_time = trio.current_time()

        async def trickle() -> None:
            for byte in data[:-1]:  # never the last byte
                await stream.send_all(bytes([byte]))
                await trio.sleep(1)

        nursery.start_soon(trickle)
        answers = await responses(stream, 1)
        assert answers[0][0] == 408
        took = trio.current_time() - start_time
        assert http.REQUEST_TIMEOUT <= took < http.REQUEST_TIMEOUT + 2
        assert http_input.counters["request_timeouts"] == 1
        assert len(spool) == 0
        nursery.cancel_scope.cancel()
