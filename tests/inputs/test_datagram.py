"""relay/inputs/datagram.py: UDP sockets (unix ones: tests/inputs/test_local.py)."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from relay.config import Endpoint, InputConfig
from relay.errors import StartupError
from relay.inputs import datagram, reader
from relay.message import Batch
from relay.outputs import delivery
from relay.protocol.framing import OversizePolicy
from relay.spool.router import Route, Router
from relay.spool.spool import Spool, memory_spool
from relay.stats import Counters
from tests.waiting import await_until


def make_input(spool: Spool, endpoint: Endpoint, **settings: object) -> datagram.DatagramInput:
    config = InputConfig("d", endpoint, **settings)  # type: ignore[arg-type]
    router = Router([Route(spool, Counters("output", "o", delivery.COUNTERS))])
    dgram = datagram.DatagramInput(config, router, Counters("input", "d", datagram.COUNTERS))
    dgram.open()
    return dgram


def loopback_input(spool: Spool, **settings: object) -> tuple[datagram.DatagramInput, int]:
    """A UDP input on 127.0.0.1 at a port of the kernel's choice, and that port."""
    dgram = make_input(spool, Endpoint("udp", "127.0.0.1", 0), **settings)
    return dgram, int(dgram.address.rsplit(":", 1)[1])


def queued(spool: Spool) -> list[bytes]:
    return [m for b in spool.peek(1 << 40) for m in b.messages]


async def wait_for(spool: Spool, count: int) -> None:
    with trio.fail_after(10):
        while len(spool) < count:
            await spool.wait_changed()


async def test_udp_one_message_per_datagram() -> None:
    spool = memory_spool()
    dgram, port = loopback_input(
        spool,
        max_message_size=100,
        oversize=OversizePolicy.TRUNCATE,
    )
    sent = [b"<13>seq=%d" % i for i in range(500)] + [
        b"<13>lf\n",
        b"<13>" + b"x" * 200,
        b"\xff\x00 raw",
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for message in sent:
                client.sendto(message, ("127.0.0.1", port))
        await wait_for(spool, len(sent))
        nursery.cancel_scope.cancel()
    got = queued(spool)
    assert got[:500] == sent[:500]
    assert got[500:] == [b"<13>lf", b"<13>" + b"x" * 96, b"\xff\x00 raw"]
    assert dgram.counters["received"] == len(sent)
    assert dgram.counters["truncated"] == 1


async def test_udp_full_spool_drops_and_counts() -> None:
    spool = memory_spool(max_messages=10, max_bytes=1 << 20)
    dgram, port = loopback_input(spool)
    route = dgram.router.routes[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for burst in (range(20), range(20, 100)):  # the first burst fills the spool
                for i in burst:
                    client.sendto(b"<13>seq=%d" % i, ("127.0.0.1", port))
                sent = burst[-1] + 1
                await await_until(lambda: dgram.counters["received"] >= sent, 10)  # noqa: B023
        nursery.cancel_scope.cancel()
    dropped = route.counters["dropped_queue_full"]
    assert dropped >= 80
    assert len(spool) + dropped == 100


async def test_udp_drain_round_is_bounded_in_bytes() -> None:
    # 64 datagrams of 60,000 bytes wait in the kernel before the input reads:
    # one round of 1,024 would hold (and queue as one batch) all 3.7 MB.
    spool = memory_spool(max_bytes=1 << 30)
    dgram, port = loopback_input(spool, max_message_size=65_536)
    sent = [b"<13>seq=%d " % i + b"x" * 60_000 for i in range(64)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for message in sent:
            client.sendto(message, ("127.0.0.1", port))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        await wait_for(spool, len(sent))
        nursery.cancel_scope.cancel()
    batches = spool.peek(1 << 40)
    assert [m for b in batches for m in b.messages] == sent
    assert max(b.nbytes for b in batches) < datagram.DRAIN_BYTES + 65_536
    assert len(batches) >= 3


async def test_a_flood_is_read_from_trio_then_the_thread_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """3,000 datagrams waiting at once (more than a hand-over takes) make trio
    read the socket (inputs/reader.py), napping between looks once they come
    fewer than a look takes; a trickle afterwards gives it back to the
    thread. Every datagram arrives, in order, once."""
    # A flood is DRAIN_LIMIT datagrams within one hand-over's time: a long one,
    # so that a slow (busy) machine sees the flood too.
    monkeypatch.setattr(reader, "HANDOVER", 5.0)
    spool = memory_spool()
    dgram, port = loopback_input(spool)
    flood = [b"<13>seq=%d" % i for i in range(3000)]
    trickle = [b"<13>seq=%d" % i for i in range(3000, 3000 + 2 * reader.QUIET_LOOKS)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for message in flood:
            client.sendto(message, ("127.0.0.1", port))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dgram.serve)
            await wait_for(spool, len(flood))
            assert dgram.reader is not None
            assert dgram.reader.floods == 1
            dgram.reader.handover = 0.01  # from now on (read after the flood)
            for i, message in enumerate(trickle, len(flood) + 1):
                client.sendto(message, ("127.0.0.1", port))
                await wait_for(spool, i)
            assert dgram.reader._resume.is_set()  # the thread reads again
            assert dgram.reader.flood_naps > 0  # trio napped between looks (UDP)
            nursery.cancel_scope.cancel()
    assert queued(spool) == flood + trickle


def test_udp_port_in_use_is_a_startup_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(StartupError, match=f"udp://127.0.0.1:{port}: address already in use"):
            make_input(memory_spool(), Endpoint("udp", "127.0.0.1", port))


async def test_an_error_while_queueing_loses_that_wake_up_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = memory_spool()
    dgram, port = loopback_input(spool)
    put_nowait = dgram.router.put_nowait

    def put_or_fail(batch: Batch) -> int:
        if b"<13>boom" in batch.messages:
            raise RuntimeError("injected")
        return put_nowait(batch)

    dgram.router.put_nowait = put_or_fail  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for message in (b"<13>before", b"<13>boom", b"<13>boom"):
                client.sendto(message, ("127.0.0.1", port))
                await await_until(lambda: dgram.counters["received"] >= 1, 5)
            await await_until(lambda: dgram.counters["handler_errors"] >= 1, 5)
            client.sendto(b"<13>after", ("127.0.0.1", port))
            await wait_for(spool, 2)
        nursery.cancel_scope.cancel()
    assert queued(spool) == [b"<13>before", b"<13>after"]
    assert "datagrams not queued after an error: RuntimeError: injected" in caplog.text


async def test_a_trickle_from_two_senders_keeps_each_ones_order_and_address() -> None:
    """The reader takes a datagram at a time when it wakes and the rest in
    naps (recvmmsg, whose struct sockaddr it turns into the address recvfrom
    gives): each sender's messages arrive once, in order, under its address."""
    spool = memory_spool()
    dgram, port = loopback_input(spool)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for client in clients:
            client.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dgram.serve)
            for i in range(400):
                clients[i % 2].sendto(b"<13>seq=%d" % i, ("127.0.0.1", port))
                if i % 8 == 7:
                    await trio.sleep(0.001)
            await wait_for(spool, 400)
            nursery.cancel_scope.cancel()
        by_peer: dict[str, list[bytes]] = {}
        for batch in spool.peek(1 << 40):
            by_peer.setdefault(batch.peer, []).extend(batch.messages)
        assert dgram.reader is not None and dgram.reader.looks > 0
        names = [f"127.0.0.1:{client.getsockname()[1]}" for client in clients]
        assert sorted(by_peer) == sorted(names)
        for n, name in enumerate(names):
            assert by_peer[name] == [b"<13>seq=%d" % i for i in range(n, 400, 2)]
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("many", [True, False], ids=["recvmmsg", "recv"])
async def test_oversize_datagrams_alone_are_counted_without_waiting_for_more(
    monkeypatch: pytest.MonkeyPatch, many: bool
) -> None:
    """Datagrams over max_message_size, dropped (oversize = "drop"), are
    counted at the next hand-over even when no other datagram comes."""
    from relay.inputs import recvmmsg

    if not many:
        monkeypatch.setattr(recvmmsg, "_RECVMMSG", None)
    spool = memory_spool()
    dgram, port = loopback_input(
        spool,
        max_message_size=100,
        oversize=OversizePolicy.DROP,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for _ in range(3):
                client.sendto(b"<13>" + b"x" * 200, ("127.0.0.1", port))
        await await_until(lambda: dgram.counters["dropped_oversize"] == 3, 5)
        nursery.cancel_scope.cancel()
    assert len(spool) == 0
