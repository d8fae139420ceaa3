"""relay/outputs/tcp.py over real loopback sockets."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from relay.config import Endpoint, OutputConfig
from relay.message import Batch
from relay.outputs import delivery
from relay.outputs.tcp import CONFIRM_AGE, TcpOutput
from relay.protocol.framing import FrameDecoder
from relay.spool.spool import memory_spool
from relay.stats import Counters


def make_output(port: int, confirm_age: float = CONFIRM_AGE) -> TcpOutput:
    """A TCP output to ``port``; a test that looks at the window of unconfirmed
    batches passes ``confirm_age=math.inf``, so that how long it takes (on a
    busy machine) cannot confirm them under its eyes."""
    config = OutputConfig("up", Endpoint("tcp", "127.0.0.1", port), retry_max=0.2)
    output = TcpOutput(config, memory_spool(), Counters("output", "up", delivery.COUNTERS))
    output.confirm_age = confirm_age
    return output


def batch(*seqs: int) -> Batch:
    return Batch([b"<13>1 - - - - - seq=%d" % s for s in seqs], received=0.0)


async def read_frames(stream: trio.abc.ReceiveStream, want: int) -> list[bytes]:
    """The next ``want`` frames (fewer at EOF); fails after 10 s."""
    decoder = FrameDecoder()
    frames: list[bytes] = []
    with trio.fail_after(10):
        while len(frames) < want:
            data = bytes(await stream.receive_some(65536))
            frames += decoder.receive_data(data)
            if not data:
                break
    return frames


async def test_collector_closing_between_two_batches_loses_neither() -> None:
    """rsyslog#3929: the write after a peer close must not vanish."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    output = make_output(port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        output.spool.put_nowait(batch(0, 1))
        first = await listeners[0].accept()
        assert await read_frames(first, 2) == [b"<13>1 - - - - - seq=0", b"<13>1 - - - - - seq=1"]
        await output.spool.wait_empty()
        await first.aclose()  # the collector (or a load balancer) drops the idle connection
        await trio.testing.wait_all_tasks_blocked()
        output.spool.put_nowait(batch(2))
        second = await listeners[0].accept()
        assert await read_frames(second, 1) == [b"<13>1 - - - - - seq=2"]
        await output.spool.wait_empty()
        nursery.cancel_scope.cancel()
    await second.aclose()
    assert output.counters["delivered"] == 3
    await listeners[0].aclose()


async def test_retries_until_the_collector_comes_up(autojump_clock: trio.testing.MockClock) -> None:
    probe = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = probe[0].socket.getsockname()[1]
    await probe[0].aclose()  # nothing listens there now: connection refused
    output = make_output(port)
    output.spool.put_nowait(batch(0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        await trio.sleep(5)  # virtual time: several failed attempts with back-off
        assert output.counters["failures"] >= 3
        assert len(output.spool) == 1  # nothing is dropped while it waits
        assert output.last_error == f"cannot connect to 127.0.0.1:{port}: Connection refused"
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        stream = await listeners[0].accept()
        assert await read_frames(stream, 1) == [b"<13>1 - - - - - seq=0"]
        await output.spool.wait_empty()
        nursery.cancel_scope.cancel()
    await stream.aclose()
    await listeners[0].aclose()
    assert output.counters["delivered"] == 1


async def test_a_collector_dying_with_unread_data_gets_it_again() -> None:
    """The collector's kernel took the batch, then the collector died before
    reading it: the batch is written again on the next connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    output = make_output(port, confirm_age=math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        output.spool.put_nowait(batch(0, 1, 2))
        first = await listeners[0].accept()
        await trio.testing.wait_all_tasks_blocked()  # written, in the peer's buffer, unread
        assert output.window.batches == 1
        await first.aclose()  # dies without reading: the peer's kernel resets
        second = await listeners[0].accept()
        assert await read_frames(second, 3) == [b"<13>1 - - - - - seq=%d" % i for i in range(3)]
        await trio.testing.wait_all_tasks_blocked()  # the output has recorded the write
        assert output.window.batches == 1
        output.confirm_age = 0  # the collector has had its time to take them in
        with trio.fail_after(10):
            await output.spool.wait_empty()  # confirmed on the live connection
        nursery.cancel_scope.cancel()
    await second.aclose()
    await listeners[0].aclose()
    assert output.counters["resent"] == 3
    assert output.counters["delivered"] == 3


async def test_after_a_lost_connection_the_window_goes_first_in_order() -> None:
    """The window is always the head of the spool: when the connection is found
    closed while a newer batch is in hand, the window is written again before it."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    output = make_output(port, confirm_age=math.inf)
    expected = [b"<13>1 - - - - - seq=%d" % i for i in range(6)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        output.spool.put_nowait(batch(0, 1))
        first = await listeners[0].accept()
        assert await read_frames(first, 2) == expected[:2]
        output.spool.put_nowait(batch(2, 3))
        assert await read_frames(first, 2) == expected[2:4]
        await trio.testing.wait_all_tasks_blocked()  # the output has recorded the write
        assert output.window.batches == 2  # both unconfirmed
        await first.aclose()  # the collector goes away
        output.spool.put_nowait(batch(4, 5))
        second = await listeners[0].accept()
        assert await read_frames(second, 6) == expected
        nursery.cancel_scope.cancel()
    await second.aclose()
    await listeners[0].aclose()


async def test_a_stop_keeps_the_window_in_the_spool_and_resends_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stopping is not losing a connection: what is unconfirmed stays queued (to
    be saved), is not counted as resent, and no "connection lost" is logged."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    output = make_output(port, confirm_age=math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        output.spool.put_nowait(batch(0, 1, 2))
        stream = await listeners[0].accept()
        assert len(await read_frames(stream, 3)) == 3
        await trio.testing.wait_all_tasks_blocked()
        assert output.window.batches == 1
        nursery.cancel_scope.cancel()
    await stream.aclose()
    await listeners[0].aclose()
    assert len(output.spool) == 3
    assert output.counters["resent"] == 0
    assert "connection lost" not in caplog.text


class TaskSteps(trio.abc.Instrument):
    """How often each task ran (a step: from a wake-up to its next wait)."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


async def test_a_lone_message_costs_the_output_one_step() -> None:
    """At a trickle each message comes alone: the output wakes for it, writes
    it straight to the socket and waits for the next, in one step (no
    scheduling round of its own after the write: waiting is one)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    output = make_output(listeners[0].socket.getsockname()[1])
    counter = TaskSteps()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run, name="output")
        output.spool.put_nowait(batch(0))  # connects
        collector = await listeners[0].accept()
        assert len(await read_frames(collector, 1)) == 1
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(counter)
        for seq in range(1, 21):
            # Apart by more than the coalescing delay, as a trickle is.
            await trio.sleep(delivery.COALESCE_DELAY * 1.5)
            output.spool.put_nowait(batch(seq))
            assert len(await read_frames(collector, 1)) == 1
            await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.remove_instrument(counter)
        nursery.cancel_scope.cancel()
    await collector.aclose()
    await listeners[0].aclose()
    assert counter.steps["output"] == 20
