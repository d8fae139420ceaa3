"""From inputs to the outputs' spools.

For now every input feeds every output (fan-out). Each output has its own
spool, so one slow upstream never stalls another output until that spool's
memory and disk budgets are both spent; then its ``on_full`` policy decides.

Reliable inputs (TCP) call :meth:`Router.put`: with ``on_full = block`` it
waits for room, so back-pressure reaches the sender's socket and the
sender's own queue takes over. Lossy inputs (UDP, unix datagrams) call
:meth:`Router.put_nowait`, which never waits; a spool that is full drops the
batch for that output only, and the drop is counted there.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.message import Batch
from relay.spool.spool import Admission, Spool
from relay.stats import Counters


class Route:
    """One output's spool with the counters that say what reached it."""

    __slots__ = ("counters", "spool")

    def __init__(self, spool: Spool, counters: Counters) -> None:
        self.spool = spool
        self.counters = counters


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)

    async def put(self, batch: Batch) -> None:
        """Queue ``batch`` for every output, waiting where on_full is block."""
        for route in self.routes:
            admission = route.spool.put_nowait(batch)
            if admission is Admission.FULL:
                admission = await route.spool.put(batch)
            if admission is Admission.QUEUED:
                route.counters.add("queued", len(batch.messages))

    def put_nowait(self, batch: Batch) -> int:
        """Queue ``batch`` where the spools take it; return how many outputs dropped it."""
        dropped = 0
        for route in self.routes:
            admission = route.spool.put_nowait(batch)
            if admission is Admission.QUEUED:
                route.counters.add("queued", len(batch.messages))
            elif admission is Admission.FULL:
                route.counters.add("dropped_queue_full", len(batch.messages))
                dropped += 1
            else:
                dropped += 1  # counted by the spool, by its on_full policy
        return dropped
