"""From inputs to the outputs' spools.

For now every input feeds every output (fan-out). Each output has its own
spool, so one slow upstream never stalls another output.

Reliable inputs (TCP) call :meth:`Router.put`, which waits for room in every
spool: back-pressure travels to the sender's socket, and the sender's own
queue takes over. Lossy inputs (UDP, unix datagrams) call
:meth:`Router.put_nowait`, which never waits; a spool without room drops the
batch for that output only, and the drop is counted there.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.message import Batch
from relay.spool.memory import MemorySpool
from relay.stats import Counters


class Route:
    """One output's spool with the counters that say what reached it."""

    __slots__ = ("counters", "spool")

    def __init__(self, spool: MemorySpool, counters: Counters) -> None:
        self.spool = spool
        self.counters = counters


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)

    async def put(self, batch: Batch) -> None:
        """Queue ``batch`` for every output, waiting for room (back-pressure)."""
        for route in self.routes:
            if not route.spool.put_nowait(batch):
                await route.spool.put(batch)
            route.counters.add("queued", len(batch.messages))

    def put_nowait(self, batch: Batch) -> int:
        """Queue ``batch`` where there is room; return how many outputs dropped it."""
        dropped = 0
        for route in self.routes:
            if route.spool.put_nowait(batch):
                route.counters.add("queued", len(batch.messages))
            else:
                route.counters.add("dropped_queue_full", len(batch.messages))
                dropped += 1
        return dropped
