"""Which of an output's targets gets the next batch: failover and load balancing.

The decisions only: no sockets, no trio; time (``now``) and the jitter
(``random``) are passed in, so tests drive them with plain numbers. The TCP
output asks :meth:`TargetSelector.plan` what to do before each write and
reports back what happened (:meth:`connecting`, :meth:`connected`,
:meth:`failed`, :meth:`closed`, :meth:`delivered`); the state changes worth
a log line come back as events.

* ``failover``: every batch goes to the first target, in list order, that is
  connected. A target that fails is down and skipped until its own back-off
  expires; then, while a later target carries the traffic, it is *probed*
  (connected to in the background) and the traffic returns to it at the next
  batch once the probe connected. The switch is always between two writes, so
  it neither loses nor repeats a batch.
* ``loadbalance``: round-robin per write over the connected targets, one
  connection kept open to each; a target that fails is skipped until its
  back-off expires, then probed back into the rotation.

When no target is connected and none is due, the back-off of each target no
longer matters: every target is tried once, in order, and if all of them fail
the output's own back-off (the shared delivery loop) paces the next round.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Sequence
from typing import Any

from relay.config import Endpoint, TargetMode
from relay.policy.backoff import Backoff


class State(enum.Enum):
    IDLE = "idle"  # not connected, and nothing wrong with it: may be tried at once
    CONNECTING = "connecting"  # an attempt is under way
    UP = "up"  # connected
    DOWN = "down"  # the last attempt failed: skipped until ``retry_at``


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What the selector knows about one target."""

    endpoint: Endpoint
    backoff: Backoff
    state: State = State.IDLE
    retry_at: float = 0.0  # when DOWN: the earliest time to try it again
    healthy: bool = True  # as last reported (a TargetUp / TargetDown event)
    reason: str = ""  # why it last failed


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What to do for the next batch. At most one of ``write`` and ``connect`` is set;
    neither means every target is down (or being connected to): wait and retry."""

    write: int | None = None  # a connected target: write the batch there
    connect: int | None = None  # nothing is connected: connect to this one first
    probe: tuple[int, ...] = ()  # connect to these in the background


@dataclasses.dataclass(frozen=True, slots=True)
class TargetUp:
    endpoint: Endpoint


@dataclasses.dataclass(frozen=True, slots=True)
class TargetDown:
    endpoint: Endpoint
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class FailedOver:
    """Failover: the traffic moved from ``old`` to ``new``, a later target."""

    old: Endpoint
    new: Endpoint


@dataclasses.dataclass(frozen=True, slots=True)
class FailedBack:
    """Failover: the traffic returned from ``old`` to ``new``, an earlier target."""

    old: Endpoint
    new: Endpoint


Event = TargetUp | TargetDown | FailedOver | FailedBack


class TargetSelector:
    """The state of an output's targets and the choice of the next one."""

    def __init__(self, endpoints: Sequence[Endpoint], mode: TargetMode, backoff: Backoff) -> None:
        if not endpoints:
            raise ValueError("an output needs at least one target")
        self.mode = mode
        self._targets = [Target(endpoint, backoff.reset()) for endpoint in endpoints]
        self._current = 0  # failover: where the traffic goes (the first target at start)
        self._next = 0  # loadbalance: where the round-robin starts the next time

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(self._targets)

    def state(self, index: int) -> State:
        return self._targets[index].state

    def endpoint(self, index: int) -> Endpoint:
        return self._targets[index].endpoint

    # -- the decision --------------------------------------------------------

    def plan(self, now: float, exclude: Collection[int] = ()) -> Plan:
        """What to do with the next batch at time ``now``.

        ``exclude`` holds the targets that already failed for this batch.
        """
        pool = [
            i
            for i in self._order()
            if i not in exclude and self._targets[i].state is not State.CONNECTING
        ]
        due = [i for i in pool if self._due(i, now)]
        up = [i for i in due if self._targets[i].state is State.UP]
        if up:
            chosen = up[0]
            before = due[: due.index(chosen)]  # preferred to the chosen one, not connected
            if self.mode is TargetMode.FAILOVER:
                before = before[:1]  # only the first matters: it takes the traffic back
            return Plan(write=chosen, probe=tuple(before))
        if due:
            return Plan(connect=due[0])
        if pool:  # every target is down: try them all, the output's back-off paces us
            return Plan(connect=pool[0])
        return Plan()

    def _order(self) -> list[int]:
        count = len(self._targets)
        if self.mode is TargetMode.LOADBALANCE:
            return [(self._next + k) % count for k in range(count)]
        return list(range(count))

    def _due(self, index: int, now: float) -> bool:
        target = self._targets[index]
        return target.state is not State.DOWN or target.retry_at <= now

    # -- what happened -------------------------------------------------------

    def connecting(self, index: int) -> None:
        """An attempt to connect to ``index`` started."""
        self._update(index, state=State.CONNECTING)

    def connected(self, index: int) -> list[Event]:
        """The attempt succeeded."""
        target = self._targets[index]
        self._update(index, state=State.UP, healthy=True)
        return [] if target.healthy else [TargetUp(target.endpoint)]

    def failed(self, index: int, now: float, reason: str, random: float) -> list[Event]:
        """Connecting to or writing to ``index`` failed; ``random`` in [0, 1) is the jitter."""
        target = self._targets[index]
        backoff = target.backoff.increment()
        self._update(
            index,
            state=State.DOWN,
            backoff=backoff,
            retry_at=now + backoff.delay(random),
            healthy=False,
            reason=reason,
        )
        return [TargetDown(target.endpoint, reason)] if target.healthy else []

    def closed(self, index: int) -> None:
        """The connection to ``index`` ended, or an attempt was abandoned, without a fault
        of the target (an idle close, a shutdown): it may be tried again at once."""
        if self._targets[index].state in (State.UP, State.CONNECTING):
            self._update(index, state=State.IDLE)

    def delivered(self, index: int) -> list[Event]:
        """A batch was written to ``index``.

        Failover: every later connected target becomes idle (the caller closes
        those connections): the traffic stays on ``index`` until it fails or
        an earlier target is back. An earlier one that is connected (a probe
        that finished during this write) takes the next batch.
        """
        backoff = self._targets[index].backoff
        if backoff.failures:  # (a record is rebuilt only when it changes)
            self._update(index, backoff=backoff.reset())
        if self.mode is TargetMode.LOADBALANCE:
            self._next = (index + 1) % len(self._targets)
            return []
        for other, target in enumerate(self._targets):
            if other > index and target.state is State.UP:
                self._update(other, state=State.IDLE)
        old, self._current = self._current, index
        if index > old:
            return [FailedOver(self.endpoint(old), self.endpoint(index))]
        if index < old:
            return [FailedBack(self.endpoint(old), self.endpoint(index))]
        return []

    def _update(self, index: int, **changes: Any) -> None:
        self._targets[index] = dataclasses.replace(self._targets[index], **changes)
