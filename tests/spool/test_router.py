"""The router across a reload (relay/spool/router.py, Router.swap)."""

from __future__ import annotations

import trio
import trio.testing

from relay.message import Batch
from relay.outputs.delivery import COUNTERS
from relay.policy.filter import Filter
from relay.policy.stage import Stage
from relay.spool.router import Route, Router
from relay.spool.spool import OnFull, Spool, memory_spool
from relay.stats import Counters


def route(spool: Spool) -> Route:
    return Route(spool, Counters("output", spool.name, COUNTERS))


def held(spool: Spool) -> list[bytes]:
    return [m for b in spool.peek(1 << 30) for m in b.messages]


async def test_a_put_waiting_for_a_removed_output_is_kept_by_its_spool() -> None:
    """A batch waiting for room in a spool whose output a reload removes is
    taken by that spool (to be saved with it) and by the others once each."""
    gone = route(memory_spool(max_messages=1, name="gone"))  # on_full = block
    stays = route(memory_spool(name="stays"))
    router = Router([gone, stays])
    await router.put(Batch([b"first"], received=0.0))  # gone's memory is full now
    done = trio.Event()

    async def put() -> None:
        await router.put(Batch([b"second"], received=0.0))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # waiting for room in "gone"
        router.swap([stays], Stage([Filter()], [None]), removed=[gone])
        with trio.fail_after(5):
            await done.wait()
    assert held(gone.spool) == [b"first", b"second"]
    assert held(stays.spool) == [b"first", b"second"]
    assert gone.counters["queued"] == 2
    await router.put(Batch([b"third"], received=0.0))  # routed by the new routes only
    assert held(gone.spool) == [b"first", b"second"]
    assert held(stays.spool) == [b"first", b"second", b"third"]


def test_refusing_names_the_full_spools_and_queues_nothing() -> None:
    """What the HTTP input asks before it queues a request (429 or all of it)."""
    roomy, full = memory_spool(name="roomy"), memory_spool(2, name="full")
    dropping = memory_spool(2, on_full=OnFull.DROP_NEWEST, name="dropping")
    router = Router([route(roomy), route(full), route(dropping)])
    batch = Batch([b"<13>seq=1", b"<13>seq=2"], received=0.0, peer="p", input="i")
    assert router.refusing(batch) == []
    router.put_nowait(batch)
    # full (block) refuses; dropping would drop, as its on_full says: not a refusal
    assert router.refusing(batch) == ["full"]
    assert [len(s) for s in (roomy, full, dropping)] == [2, 2, 2]
