"""The in-flight window: what an output has written and does not yet know safe.

This is the one contract between a spool and an output that writes to a
connection (TCP, TLS, RELP; UDP and files use it with nothing kept):

* The output takes batches from the head of its spool, after those in flight:
  :meth:`Window.take` says how many head batches to skip.
* What it writes goes in flight (:meth:`Window.written`), as one *flight*,
  with the number of answers it waits for (RELP: one per message; 0: safe at
  once) and, for TCP, the connection and byte count that tell it later.
* :meth:`Window.confirm` acks the flights that became safe, from the head of
  the spool and in order: a safe flight behind one that is not waits for it.
  :meth:`Window.confirm_oldest` acks the oldest whatever they wait for (the
  output knows them safe, or may not keep them longer: a bound).
* When a connection breaks, :meth:`Window.lost` sends back every flight not
  yet safe: it is written again from the head, before anything newer, and its
  messages count as ``resent``. The batches taken since are no longer those
  after the window (:meth:`Window.moved`): the output takes again.
* Stopping is not losing (:meth:`Window.release`): what is in flight stays
  queued (and is saved at stop), and nothing counts as resent.

So delivery is at-least-once, and the duplicates are bounded by the window.
Pure logic: no trio, no I/O; the time is passed in; what it acks goes to a
:class:`Head` (the spool).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Generic, Protocol, TypeVar

from relay.message import Batch
from relay.stats import Counters

T = TypeVar("T")


class Head(Protocol):
    """The head of a spool, as the window sees it."""

    def ack(self, count: int) -> None:
        """The ``count`` head batches are delivered: remove them for good."""


class WindowLost(Exception):
    """Raised by an output's ``deliver()``: the window went back while it was
    delivering, so the batches in hand are no longer those after the window;
    the delivery loop takes again from the head."""


@dataclasses.dataclass(slots=True, eq=False)
class Flight(Generic[T]):
    """Head batches written together (one write, or one RELP batch), not yet acked.

    ``awaiting`` counts the answers still to come: the output counts it down
    (RELP, one per ``rsp``); at 0 the flight is safe. ``refused`` counts the
    answers that refused a message (not to be sent again: counted as
    ``dropped_rejected`` when the flight is acked).
    """

    batches: int
    messages: int
    nbytes: int
    at: float  # when it was written
    via: T  # what carried it (TCP: the connection)
    end: int  # TCP: the connection's byte count after this write
    awaiting: int
    refused: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class WindowStatistics:
    batches: int  # head batches in flight
    messages: int
    nbytes: int
    flights: int
    oldest_at: float | None  # when the oldest flight was written
    losses: int  # times a lost connection sent flights back


class Window(Generic[T]):
    """The flights at the head of one spool. See the module docstring.

    ``max_bytes`` and ``max_messages`` bound what the window holds: past
    either, :meth:`written` acks the oldest flights (all but the newest)
    without waiting for them to be safe.
    """

    def __init__(
        self,
        head: Head,
        counters: Counters,
        *,
        max_bytes: int | None = None,
        max_messages: int | None = None,
    ) -> None:
        self._head = head
        self._counters = counters
        self._max_bytes = max_bytes
        self._max_messages = max_messages
        self._flights: collections.deque[Flight[T]] = collections.deque()
        self._batches = 0
        self._messages = 0
        self._nbytes = 0
        self._losses = 0  # how many times flights went back (for moved())
        self._taken = 0  # _losses at the last take()

    @property
    def batches(self) -> int:
        """Head batches in flight."""
        return self._batches

    @property
    def messages(self) -> int:
        """Messages in flight."""
        return self._messages

    # -- taking and writing ------------------------------------------------------

    def take(self) -> int:
        """How many head batches are in flight: the next to write come after them.

        The batches taken so stay the ones after the window until a loss:
        :meth:`moved` says when they are not.
        """
        self._taken = self._losses
        return self._batches

    def moved(self) -> bool:
        """Whether flights went back since :meth:`take`: the batches taken then
        are no longer those after the window, and must be taken again."""
        return self._losses != self._taken

    def written(
        self, batches: Sequence[Batch], now: float, via: T, *, end: int = 0, awaiting: int = 0
    ) -> Flight[T]:
        """``batches`` (the ones taken after the window) are written: they go in
        flight, safe once ``awaiting`` answers came (0: safe now, for
        :meth:`confirm`). Past the bounds, the oldest flights are acked."""
        messages = 0
        nbytes = 0
        for batch in batches:
            messages += len(batch)
            nbytes += batch.nbytes
        flight = Flight(len(batches), messages, nbytes, now, via, end, awaiting)
        self._flights.append(flight)
        self._batches += flight.batches
        self._messages += messages
        self._nbytes += nbytes
        max_bytes, max_messages = self._max_bytes, self._max_messages
        acked = 0
        while (
            (max_bytes is not None and self._nbytes > max_bytes)
            or (max_messages is not None and self._messages > max_messages)
        ) and len(self._flights) > 1:
            acked += self._pop()
        self._ack(acked)
        return flight

    def resent(self, batches: Sequence[Batch]) -> None:
        """``batches`` were being written, not in flight yet, when the connection
        broke: part of them may have arrived. They are written again whole, so
        they count as ``resent`` like the window."""
        self._counters.add("resent", sum([len(batch) for batch in batches]))

    # -- confirming ----------------------------------------------------------------

    def flights(self) -> Iterator[Flight[T]]:
        """The flights, oldest (the head of the spool) first. Do not change the
        window while iterating."""
        return iter(self._flights)

    def confirm(self) -> None:
        """Ack the flights that are safe (no answer awaited), oldest first, up to
        the first that is not."""
        flights = self._flights
        count = 0
        while flights and flights[0].awaiting <= 0:
            count += self._pop()
        self._ack(count)

    def confirm_oldest(self, count: int = 1) -> None:
        """Ack the ``count`` oldest flights now, whatever they still await (the
        output knows them safe, or may not keep them longer)."""
        acked = 0
        for _ in range(count):
            acked += self._pop()
        self._ack(acked)

    def confirm_all(self) -> None:
        """Ack every flight now (the output may not keep them any longer)."""
        count = 0
        while self._flights:
            count += self._pop()
        self._ack(count)

    def _pop(self) -> int:
        """Take the oldest flight out, counted as delivered; its batches, to ack."""
        flight = self._flights.popleft()
        self._batches -= flight.batches
        self._messages -= flight.messages
        self._nbytes -= flight.nbytes
        counters = self._counters
        counters.add("delivered", flight.messages)
        counters.add("bytes", flight.nbytes)
        if flight.refused:
            counters.add("dropped_rejected", flight.refused)
        return flight.batches

    def _ack(self, count: int) -> None:
        if count:
            self._head.ack(count)

    # -- losing and stopping -------------------------------------------------------

    def lost(self) -> int:
        """The connection broke: every flight from the first not yet safe on goes
        back, to be written again from the head (the safe ones before it stay,
        for :meth:`confirm`). Returns how many messages went back, counted as
        ``resent``; the batches taken since :meth:`take` have :meth:`moved`."""
        flights = self._flights
        safe = 0
        while safe < len(flights) and flights[safe].awaiting <= 0:
            safe += 1
        if safe == len(flights):
            return 0
        messages = 0
        while len(flights) > safe:
            flight = flights.pop()
            self._batches -= flight.batches
            self._messages -= flight.messages
            self._nbytes -= flight.nbytes
            messages += flight.messages
        self._counters.add("resent", messages)
        self._losses += 1
        return messages

    def release(self) -> None:
        """Stopping: forget the flights without acking them or counting them as
        resent; they stay queued in the spool (which saves them)."""
        self._flights.clear()
        self._batches = self._messages = self._nbytes = 0

    def statistics(self) -> WindowStatistics:
        return WindowStatistics(
            batches=self._batches,
            messages=self._messages,
            nbytes=self._nbytes,
            flights=len(self._flights),
            oldest_at=self._flights[0].at if self._flights else None,
            losses=self._losses,
        )
