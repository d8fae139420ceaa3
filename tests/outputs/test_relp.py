"""relay/outputs/relp.py over real loopback sockets, our RelpServer on the other end."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.config import Endpoint, OutputConfig
from relay.message import Batch
from relay.outputs.relp import RelpOutput
from relay.protocol.relp import (
    CloseRequested,
    ConnectionClosed,
    ProtocolViolation,
    RelpServer,
    ServerEvent,
    SessionOpened,
    SyslogMessages,
)
from relay.spool.spool import memory_spool
from relay.stats import Counters
from tests.waiting import await_until


def make_output(port: int, window: int = 1024) -> RelpOutput:
    config = OutputConfig("up", Endpoint("relp", "127.0.0.1", port), retry_max=0.2, window=window)
    return RelpOutput(config, memory_spool(), Counters("output", "up", RelpOutput.COUNTERS))


def batch(*seqs: int) -> Batch:
    return Batch([b"<13>1 - - - - - seq=%d" % s for s in seqs], received=0.0)


class Collector:
    """One accepted connection served by our sans-IO RelpServer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.server = RelpServer()
        self.got: list[bytes] = []
        self.closed = False

    async def read(self) -> list[int]:
        """One read: answer open and close at once; return the new syslog txnrs."""
        data = await self.stream.receive_some(65536)
        txnrs: list[int] = []
        for event in self.server.receive_data(data):
            if isinstance(event, SessionOpened):
                await self.stream.send_all(self.server.accept_open())
            elif isinstance(event, SyslogMessages):
                self.got.extend(event.messages)
                txnrs.extend(event.txnrs)
            elif isinstance(event, CloseRequested):
                for txnr in self.server.unanswered():
                    await self.stream.send_all(self.server.send_rsp(txnr))
                self.closed = True
            elif isinstance(event, ConnectionClosed):
                self.closed = True
        if not data:
            self.closed = True
        return txnrs

    async def ack(self, txnrs: list[int], code: int = 200) -> None:
        text = "OK" if code == 200 else "error"
        await self.stream.send_all(b"".join(self.server.send_rsp(t, code, text) for t in txnrs))

    async def serve(self, until: int) -> None:
        """Take and ack messages until ``until`` have arrived (or the session ends)."""
        while len(self.got) < until and not self.closed:
            await self.ack(await self.read())


def seq(message: bytes) -> int:
    return int(message.rsplit(b"=", 1)[1])


async def test_acked_batches_leave_the_spool_unacked_ones_stay() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    output = make_output(listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        output.spool.put_nowait(batch(0, 1, 2))
        collector = Collector(await listeners[0].accept())
        txnrs: list[int] = []
        while len(txnrs) < 3:
            txnrs += await collector.read()
        # Until the output has done all it does unanswered: waits for the rsp.
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert len(output.spool) == 3  # written, not answered: still queued
        assert output.counters["delivered"] == 0
        await collector.ack(txnrs)
        await output.spool.wait_empty()
        nursery.cancel_scope.cancel()
    await collector.stream.aclose()
    await listeners[0].aclose()
    assert [seq(m) for m in collector.got] == [0, 1, 2]
    assert output.counters["delivered"] == 3


async def test_window_is_respected_and_a_big_batch_goes_in_parts() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    output = make_output(listeners[0].socket.getsockname()[1], window=8)
    output.spool.put_nowait(batch(*range(50)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        collector = Collector(await listeners[0].accept())
        most = 0
        while len(collector.got) < 50:
            pending = []
            with trio.move_on_after(0.2):  # take all it sends without answering
                while True:
                    pending += await collector.read()
            most = max(most, len(collector.server.unanswered()))
            await collector.ack(pending)
        await output.spool.wait_empty()
        nursery.cancel_scope.cancel()
    await collector.stream.aclose()
    await listeners[0].aclose()
    assert most == 8
    assert [seq(m) for m in collector.got] == list(range(50))


@pytest.mark.parametrize("how", ["eof", "serverclose"])
async def test_lost_connection_resends_unacked_in_order_and_counts_them(how: str) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    output = make_output(listeners[0].socket.getsockname()[1])
    output.spool.put_nowait(batch(0, 1))
    output.spool.put_nowait(batch(2, 3))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        first = Collector(await listeners[0].accept())
        txnrs: list[int] = []
        while len(txnrs) < 4:
            txnrs += await first.read()
        await first.ack(txnrs[:2])  # the first batch is safe; the second is not
        while len(output.spool) > 2:
            await output.spool.wait_changed()
        if how == "serverclose":
            await first.stream.send_all(first.server.server_close())
        await first.stream.aclose()  # the collector goes with 2 unanswered
        second = Collector(await listeners[0].accept())
        output.spool.put_nowait(batch(4))
        await second.serve(3)
        await output.spool.wait_empty()
        nursery.cancel_scope.cancel()
    await second.stream.aclose()
    await listeners[0].aclose()
    assert [seq(m) for m in first.got] == [0, 1, 2, 3]
    assert [seq(m) for m in second.got] == [2, 3, 4]  # in order, new txnrs
    assert output.counters["resent"] == 2
    assert output.counters["delivered"] == 5


async def test_rejected_message_is_dropped_and_counted_not_resent() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    output = make_output(listeners[0].socket.getsockname()[1])
    output.spool.put_nowait(batch(0, 1, 2))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        collector = Collector(await listeners[0].accept())
        txnrs: list[int] = []
        while len(txnrs) < 3:
            txnrs += await collector.read()
        await collector.ack(txnrs[:1])
        await collector.ack(txnrs[1:2], code=500)
        await collector.ack(txnrs[2:])
        await output.spool.wait_empty()
        nursery.cancel_scope.cancel()
    await collector.stream.aclose()
    await listeners[0].aclose()
    assert output.counters["rejected"] == 1
    assert output.counters["dropped_rejected"] == 1
    assert output.counters["resent"] == 0


async def test_stop_closes_the_session_cleanly() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    output = make_output(listeners[0].socket.getsockname()[1])
    output.spool.put_nowait(batch(0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        collector = Collector(await listeners[0].accept())
        await collector.serve(1)
        await output.spool.wait_empty()
        nursery.cancel_scope.cancel()
    while not collector.closed:
        await collector.read()
    assert collector.server.state.value == "closed"  # close came and was answered
    await collector.stream.aclose()
    await listeners[0].aclose()


async def test_refused_open_is_a_failure_with_the_servers_text(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    output = make_output(listeners[0].socket.getsockname()[1])
    output.spool.put_nowait(batch(0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        stream = await listeners[0].accept()
        await stream.receive_some(65536)
        await stream.send_all(b"1 rsp 22 500 go away, not today\n")
        await await_until(lambda: output.counters["failures"] > 0, 10)
        nursery.cancel_scope.cancel()
    await stream.aclose()
    await listeners[0].aclose()
    assert "go away" in output.last_error
    assert len(output.spool) == 1


async def test_answered_batches_survive_a_loss_that_comes_before_confirm() -> None:
    """Fully answered head batches are acked, not sent again, when the session
    is lost before the delivery loop got round to confirming them."""
    output = make_output(1)
    for seqs in ([0, 1], [2, 3, 4], [5, 6, 7, 8]):
        output.spool.put_nowait(batch(*seqs))
    taken = await output.spool.wait_batches(1 << 20)
    for head, awaiting in zip(taken, [0, 0, 1], strict=True):
        output.window.written([head], 0.0, None, awaiting=awaiting)
    output._forget_window("connection lost")
    assert output.window.batches == 2
    assert output.counters["resent"] == 4
    output.confirm(0.0)
    assert output.window.batches == 0
    assert [seq(m) for b in output.spool.peek(1 << 20) for m in b.messages] == [5, 6, 7, 8]
    assert output.counters["delivered"] == 5


async def test_a_proxy_that_accepts_then_closes_gets_one_open_per_connection() -> None:
    """Behind a proxy whose collector is down, each connection is accepted and
    closed at once (librelp once queued another unanswered
    ``open`` per attempt, and the collector later refused the session). Each
    connection carries exactly one ``open`` and nothing else; once the
    collector is there, every message arrives once."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    output = make_output(listeners[0].socket.getsockname()[1])
    output.spool.put_nowait(batch(0, 1, 2))
    attempts: list[list[type]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        for _ in range(3):  # the proxy: read what comes until the open is whole, close
            stream = await listeners[0].accept()
            server = RelpServer()
            events: list[ServerEvent | ProtocolViolation | ConnectionClosed] = []
            while not events:
                events = server.receive_data(await stream.receive_some(65536))
            attempts.append([type(e) for e in events])
            await stream.aclose()
        collector = Collector(await listeners[0].accept())
        await collector.serve(until=3)
        await output.spool.wait_empty()
        nursery.cancel_scope.cancel()
    await collector.stream.aclose()
    await listeners[0].aclose()
    assert attempts == [[SessionOpened]] * 3
    assert [seq(m) for m in collector.got] == [0, 1, 2]


def test_messages_over_the_relp_limit_are_cut_at_a_utf8_boundary() -> None:
    output = make_output(1)
    long = "x" + "é" * 10
    assert output._truncate([b"short", long.encode()], 6) == [b"short", "xéé".encode()]
    assert output.counters["truncated"] == 1
