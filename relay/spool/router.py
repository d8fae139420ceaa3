"""From inputs to the outputs' spools.

Every input feeds every output (fan-out) unless the processing stage
(``policy/stage.py``: filters, routes, redaction) says which messages each
output takes; with none configured the batch goes to every spool as it came,
untouched. Each output has its own spool, so one slow upstream never stalls
another output until that spool's memory and disk budgets are both spent;
then its ``on_full`` policy decides.

Reliable inputs (TCP) call :meth:`Router.put`. When every output's memory is
full and every output is still delivering (and has on_full = block: a drop_*
output never slows an input), spilling to disk would only cost the CPU the
outputs need: the input waits instead (back-pressure reaches the
senders, whose own queues take over). An output whose memory is full while
another has room, or that has stopped delivering (its upstream is down), has
the batch written to its disk part, so it holds up nobody. With on_full =
block and the disk budget spent too, the input waits for room.

Lossy inputs (UDP, unix datagrams) call :meth:`Router.put_nowait`, which
never waits; a spool that is full drops the batch for that output only, and
the drop is counted there.

A reload (relay/app.py) changes the routes and the stage between two
batches (:meth:`Router.swap`): a batch is planned against one set of routes,
whole. A batch that is waiting for room when its output is removed is taken
by that output's spool past its budget (to be saved with it, as at a stop),
so it is neither lost nor queued twice; one waiting for an output that
stays (or is rebuilt on the same spool) lands there as planned.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from relay.message import Batch
from relay.policy.stage import Stage
from relay.spool.spool import STALL_AFTER, Admission, OnFull, Spool
from relay.stats import Counters

# While waiting for room in memory, how often to look whether an output stalled.
_RECHECK = 0.05


class Route:
    """One output's spool with the counters that say what reached it."""

    __slots__ = ("counters", "spool")

    def __init__(self, spool: Spool, counters: Counters) -> None:
        self.spool = spool
        self.counters = counters


class Router:
    def __init__(self, routes: Sequence[Route], stage: Stage | None = None) -> None:
        self.routes = tuple(routes)
        self.stage = None if stage is None or stage.passthrough else stage
        # The puts waiting for room, by id: what each still has to queue (the
        # fast path, where every spool takes its batch at once, is not here).
        self._waiting: dict[int, list[tuple[Route, Batch]]] = {}

    def swap(self, routes: Sequence[Route], stage: Stage, removed: Sequence[Route] = ()) -> None:
        """A reload: route the next batches to ``routes`` through ``stage``.

        What waiting puts still hold for a ``removed`` route is taken by its
        spool now, past its budget (:meth:`Spool.keep_at_stop`), to be saved
        with it; they go on waiting only for the routes that stay.
        """
        gone = set(removed)
        for pending in self._waiting.values():
            for route, chosen in pending:
                if route in gone:
                    route.spool.keep_at_stop(chosen)
                    route.counters.add("queued", len(chosen))
            pending[:] = [(r, b) for r, b in pending if r not in gone]
        self.routes = tuple(routes)
        self.stage = None if stage.passthrough else stage

    def _plan(self, batch: Batch) -> list[tuple[Route, Batch]]:
        """Each route with the batch it takes (the stage's decision)."""
        if self.stage is None:
            return [(route, batch) for route in self.routes]
        chosen = self.stage.route(batch)
        return [(r, b) for r, b in zip(self.routes, chosen, strict=True) if b is not None]

    async def put(self, batch: Batch, *, keep_if_cancelled: bool = False) -> None:
        """Queue ``batch`` for every output; waits as the module docstring says.

        Cancelled while waiting (the stop), with ``keep_if_cancelled`` the
        spools that had not taken it yet keep it past their budgets, to be
        saved at the stop (:meth:`Spool.keep_at_stop`): for an input whose
        sender cannot send it again (plain TCP).
        """
        pending = self._plan(batch)
        try:
            await self._put(pending)
        except trio.Cancelled:
            if keep_if_cancelled:
                for route, chosen in pending:
                    route.spool.keep_at_stop(chosen)
                    route.counters.add("queued", len(chosen))
            raise

    def refusing(self, batch: Batch) -> list[str]:
        """The outputs whose spools would not take ``batch`` now (full, on_full =
        block, memory and disk spent), by name; empty if :meth:`put` would
        not have to wait for one of them to drain. Nothing is queued: for an
        input that answers "retry later" (HTTP 429) rather than wait, and must
        not queue a request by halves."""
        return [r.counters.name for r, chosen in self._plan(batch) if r.spool.refuses(chosen)]

    def keep_at_stop(self, batch: Batch) -> None:
        """Every spool that would take ``batch`` keeps it past its budget, to be
        saved at the stop: read from a sender that cannot send it again."""
        for route, chosen in self._plan(batch):
            route.spool.keep_at_stop(chosen)
            route.counters.add("queued", len(chosen))

    async def _put(self, pending: list[tuple[Route, Batch]]) -> None:
        """:meth:`put`; ``pending`` loses each route as it takes its batch."""
        planned = len(pending)
        pending[:] = [(r, b) for r, b in pending if not self._admit(r, b, spill=False)]
        if not pending:
            return
        self._waiting[id(pending)] = pending  # a reload may take routes out (swap)
        try:
            await self._wait_room(pending, planned)
        finally:
            del self._waiting[id(pending)]

    async def _wait_room(self, pending: list[tuple[Route, Batch]], planned: int) -> None:
        deadline = trio.current_time() + STALL_AFTER
        # Outputs with on_full = drop_* never slow an input: they spill at once.
        blocking = all(r.spool.settings.on_full is OnFull.BLOCK for r, _ in pending)
        while pending and blocking and len(pending) == planned:
            if trio.current_time() >= deadline or any(r.spool.stalled() for r, _ in pending):
                break
            with trio.move_on_after(_RECHECK):
                await pending[0][0].spool.wait_changed()
            pending[:] = [(r, b) for r, b in pending if not self._admit(r, b, spill=False)]
        while pending:
            route, chosen = pending[0]
            admission = route.spool.put_nowait(chosen)
            if admission is Admission.FULL:  # on_full = block: wait for room
                await route.spool.wait_changed()
                continue  # pending[0] again: a reload may have taken it out meanwhile
            del pending[0]
            if admission is Admission.QUEUED:
                route.counters.add("queued", len(chosen))

    async def wait_durable(self) -> None:
        """Until what every spool holds is as safe as its durability promises."""
        for route in self.routes:
            await route.spool.wait_durable()

    def _admit(self, route: Route, batch: Batch, *, spill: bool) -> bool:
        """Try to queue ``batch`` on ``route``; False if it must wait or spill."""
        admission = route.spool.put_nowait(batch, spill=spill)
        if admission is Admission.QUEUED:
            route.counters.add("queued", len(batch))
        return admission is not Admission.WOULD_SPILL and admission is not Admission.FULL

    def put_nowait(self, batch: Batch) -> int:
        """Queue ``batch`` where the spools take it; return how many outputs dropped it."""
        return len(self.offer(batch)[1])

    def offer(self, batch: Batch) -> tuple[int, list[str]]:
        """:meth:`put_nowait`, saying how many outputs took ``batch`` and which
        dropped it, by name (a local input sums these up in its log)."""
        taken = 0
        dropped: list[str] = []
        for route, chosen in self._plan(batch):
            admission = route.spool.put_nowait(chosen)
            if admission is Admission.QUEUED:
                route.counters.add("queued", len(chosen))
                taken += 1
                continue
            if admission is Admission.FULL:
                route.counters.add("dropped_queue_full", len(chosen))
            # else counted by the spool, by its on_full policy
            dropped.append(route.counters.name)
        return taken, dropped
