"""relay/outputs/delivery.py: the delivery loop every output shares."""

from __future__ import annotations

import trio
import trio.testing

from relay.config import Endpoint, OutputConfig
from relay.message import Batch
from relay.outputs import delivery
from relay.outputs.delivery import COALESCE_BYTES, COALESCE_DELAY, Output
from relay.spool.spool import memory_spool
from relay.stats import Counters


class Recording(Output):
    """An output whose writes are recorded: (when, the messages written)."""

    def __init__(self) -> None:
        config = OutputConfig("r", Endpoint("udp", "127.0.0.1", 9))
        super().__init__(config, memory_spool(), Counters("output", "r", delivery.COUNTERS))
        self.writes: list[tuple[float, list[bytes]]] = []

    async def deliver(self, batches: list[Batch]) -> None:
        messages = [m for batch in batches for m in batch.messages]
        self.writes.append((trio.current_time(), messages))


async def trickle(output: Recording, count: int, gap: float) -> dict[bytes, float]:
    """Queue ``count`` one-message batches ``gap`` apart; when each was queued."""
    queued = {}
    for i in range(count):
        message = b"<13>seq=%d" % i
        queued[message] = trio.current_time()
        output.spool.put_nowait(Batch([message], received=0))
        await trio.sleep(gap)
    return queued


async def test_a_trickle_is_written_every_coalesce_delay_and_none_waits_longer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    output = Recording()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        queued = await trickle(output, 100, COALESCE_DELAY / 10)
        with trio.fail_after(1):
            await output.spool.wait_empty()
        nursery.cancel_scope.cancel()
    written = [m for _, messages in output.writes for m in messages]
    assert written == list(queued)  # all, once, in order
    # One write per COALESCE_DELAY (the first at once), not one per message.
    assert len(output.writes) <= 100 * (COALESCE_DELAY / 10) / COALESCE_DELAY + 2
    for at, messages in output.writes:
        assert all(at - queued[m] <= COALESCE_DELAY + 1e-9 for m in messages)


async def test_a_message_after_a_quiet_spell_and_big_writes_go_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    output = Recording()
    big = [b"x" * 1000] * (COALESCE_BYTES // 1000 + 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        for _ in range(3):
            await trio.sleep(1)
            start = trio.current_time()
            output.spool.put_nowait(Batch([b"<13>alone"], received=0))
            with trio.fail_after(1):
                await output.spool.wait_empty()
            output.spool.put_nowait(Batch(big, received=0))  # right after: no wait either
            with trio.fail_after(1):
                await output.spool.wait_empty()
            assert trio.current_time() == start
        nursery.cancel_scope.cancel()
    assert len(output.writes) == 6
