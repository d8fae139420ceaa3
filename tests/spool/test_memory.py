"""relay/spool/memory.py: the bounded FIFO in front of each output."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.message import Batch
from relay.spool.memory import MemorySpool


def batch(*seqs: int) -> Batch:
    return Batch([b"seq=%d" % s for s in seqs], received=0.0)


def test_fifo_peek_and_ack() -> None:
    spool = MemorySpool(max_messages=100, max_bytes=10_000)
    for i in range(3):
        assert spool.put_nowait(batch(2 * i, 2 * i + 1))
    assert len(spool) == 6
    head = spool.peek(max_bytes=1)
    assert [b.messages for b in head] == [[b"seq=0", b"seq=1"]]  # at least one batch
    assert len(spool) == 6  # peek leaves it queued
    spool.ack(1)
    assert [m for b in spool.peek(10_000) for m in b.messages] == [
        b"seq=2",
        b"seq=3",
        b"seq=4",
        b"seq=5",
    ]
    assert spool.statistics().queued_messages == 4


@pytest.mark.parametrize(("max_messages", "max_bytes"), [(4, 10_000), (100, 20)])
def test_bounds_refuse_when_full(max_messages: int, max_bytes: int) -> None:
    spool = MemorySpool(max_messages=max_messages, max_bytes=max_bytes)
    assert spool.put_nowait(batch(0, 1, 2))
    assert spool.put_nowait(batch(3, 4))  # below both bounds before: admitted
    assert spool.full
    assert not spool.put_nowait(batch(5))
    assert len(spool) == 5


async def test_put_waits_for_room() -> None:
    spool = MemorySpool(max_messages=2, max_bytes=10_000)
    spool.put_nowait(batch(0, 1))
    done = trio.Event()

    async def producer() -> None:
        await spool.put(batch(2))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # back-pressure: the producer waits
        spool.ack(1)
        await done.wait()
    assert [m for b in spool.peek(10_000) for m in b.messages] == [b"seq=2"]


async def test_wait_batches_and_wait_empty() -> None:
    spool = MemorySpool()
    got: list[Batch] = []

    async def consumer() -> None:
        got.extend(await spool.wait_batches(1 << 20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        spool.put_nowait(batch(7))
    assert got[0].messages == [b"seq=7"]
    with trio.move_on_after(1) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spool.wait_empty)
            await trio.testing.wait_all_tasks_blocked()
            spool.ack(1)
    assert not scope.cancelled_caught
