"""Per-source rate limiting: a token bucket per key, as decisions on numbers.

The trio layer passes ``now`` (``trio.current_time()``) and a key (the source
address, the sender's pid, a hostname); :class:`RateLimiter` says how many of a
batch pass. A whole batch from one key is charged at once: one dictionary
lookup and a few integer operations per batch, never an object per message.

* **Drop** (datagram inputs): :meth:`RateLimiter.admit` returns how many of the
  first ``count`` messages pass; the caller drops the rest.
  :meth:`RateLimiter.admit_exempting` does the same for a batch whose PRIs are
  known, letting through, uncharged, every message at or above
  ``exempt_severity`` (numerically at most it, as rsyslog's
  ``ratelimit.severity``).
* **Delay** (reliable inputs): :meth:`RateLimiter.wait_time` is how long until
  the bucket can take a batch; :meth:`RateLimiter.delay` charges the batch as
  of that moment and returns the wait, so the caller sleeps, forwards the batch
  and reads on: nothing is lost, the sender is slowed to ``rate``.

The bucket is kept as one integer per key, the moment it will next be full
(the "theoretical arrival time" of the GCRA), in exact integer units: a token
is ``10**9 * q`` units and a nanosecond refills ``p`` of them, for a rate of
``p/q`` messages a second. No rounding error can admit a message too many,
and :meth:`wait_time` is exact to the nanosecond. Time that goes backwards is
taken as time standing still (the limiter keeps the latest ``now`` it saw).

**Episodes.** A key's throttling episode starts at its first dropped message
and ends when it has dropped nothing for ``interval`` seconds (or when the key
leaves the table). The limiter queues a :class:`ThrottleStarted` and a
:class:`ThrottleEnded` (with the number dropped) per episode; the caller takes
them with :meth:`RateLimiter.take_events` after every call that left
:attr:`RateLimiter.has_events` true, and once per ``interval`` on a timer so that
quiet keys' episodes end, and logs each with :func:`format_event`. The
counters of :meth:`RateLimiter.statistics` are the sum of those events plus
the episodes still open.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from fractions import Fraction
from typing import TypeVar

T = TypeVar("T")

NS = 1_000_000_000  # the limiter's clock counts whole nanoseconds

# Each key costs about 190 bytes (tracemalloc, an IPv4 address key and its
# string included; tests/policy/test_ratelimit.py asserts at most 300); in a
# running relay, a table churned by a million spoofed sources, about 265 bytes
# of RSS, and about 420 for a key in a throttling episode (its record too). So
# the default table holds 10 MB at most (500 bytes a key:
# tests/interop/test_ratelimit.py asserts it). 20,000 is more sources than a
# regional relay serves; and LRU keeps the busy keys: a key evicted by a flood
# of spoofed addresses is one that sent nothing for 20,000 new keys, and it
# comes back with a full bucket (the forgiving direction: never a wrong drop).
DEFAULT_MAX_KEYS = 20_000
# A key that has dropped nothing for this long ends its episode. An episode
# lasts at least this long, so a key throttled without pause logs one start
# and one end line per episode, not a line per drop; the same interval as
# relay's other rate-limited log lines (stats.LogLimit).
DEFAULT_INTERVAL = 10.0
# How many keys statistics() names, the heaviest droppers first.
TOP_KEYS = 10
# Per-key sums of ended episodes kept for that list; past it, the lightest go.
TOP_TABLE = 1_000


@dataclasses.dataclass(frozen=True, slots=True)
class ThrottleStarted:
    """``key`` dropped its first message of an episode at ``at``."""

    key: str
    at: float


@dataclasses.dataclass(frozen=True, slots=True)
class ThrottleEnded:
    """``key`` dropped ``dropped`` messages between ``started`` and ``last_drop``.

    ``evicted``: the episode ended because the key left a full table, not
    because the key went quiet for an interval.
    """

    key: str
    dropped: int
    started: float
    last_drop: float
    evicted: bool = False

    @property
    def duration(self) -> float:
        return self.last_drop - self.started


Event = ThrottleStarted | ThrottleEnded


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitStatistics:
    keys: int  # in the table now
    max_keys: int
    admitted: int  # charged and passed
    exempt: int  # passed uncharged (severity at or above exempt_severity)
    dropped: int  # every message dropped: the ended episodes' sum plus the open ones'
    evicted: int  # keys that left the full table
    throttling: int  # episodes open now
    delayed: int  # batches that had to wait (delay mode)
    delay_seconds: float  # the sum of those waits
    top: tuple[tuple[str, int], ...]  # (key, dropped) for the heaviest droppers


def format_event(event: Event, rate: float, burst: int) -> str:
    """The log line for ``event``: ``rate limit: 127.0.0.3: 48,120 messages dropped in 12.4 s``."""
    if isinstance(event, ThrottleStarted):
        return f"rate limit: {event.key}: dropping messages above {rate:g}/s (burst {burst})"
    noun = "message" if event.dropped == 1 else "messages"
    why = " (key evicted from a full table)" if event.evicted else ""
    return (
        f"rate limit: {event.key}: {event.dropped:,} {noun} dropped in {event.duration:.1f} s{why}"
    )


def _exact(rate: float | int | Fraction) -> Fraction:
    # A float rate is read as the decimal it prints as (0.1 is 1/10), not as
    # its binary value, so that the units below stay small integers.
    return Fraction(repr(rate)) if isinstance(rate, float) else Fraction(rate)


class RateLimiter:
    """Token buckets of ``burst`` messages refilled at ``rate`` a second, one per key.

    ``max_keys`` bounds the table: a new key beyond it evicts the least
    recently charged one. ``exempt_severity`` (0-7 or None) is the least
    severe severity that passes uncharged in :meth:`admit_exempting`.
    """

    def __init__(
        self,
        rate: float | int | Fraction,
        burst: int,
        *,
        exempt_severity: int | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        exact = _exact(rate)
        if exact <= 0 or burst < 1 or max_keys < 1 or interval < 0:
            raise ValueError("rate > 0, burst >= 1, max_keys >= 1 and interval >= 0 are required")
        self.rate = rate
        self.burst = burst
        self.exempt_severity = exempt_severity
        self.max_keys = max_keys
        self.interval = interval
        self._per_ns = exact.numerator  # units refilled per nanosecond
        self._token = NS * exact.denominator  # units per token
        self._depth = burst * self._token  # units a full bucket holds
        # 1 for a PRI that is charged, 0 for an exempt one (a bytes table: summed in C).
        limit = -1 if exempt_severity is None else exempt_severity
        self._charged = bytes(int(pri & 7 > limit) for pri in range(256))
        # key -> the moment (ns * per_ns) from which the bucket is full; least recent first.
        self._full_at: collections.OrderedDict[str, int] = collections.OrderedDict()
        # key -> [started, last_drop, dropped] of its open episode; least recent drop first.
        self._episodes: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self._events: list[Event] = []
        self._now = float("-inf")
        self._units = 0  # self._now in units
        self._top: dict[str, int] = {}  # dropped in ended episodes, per key
        self._admitted = self._exempt = self._dropped = self._evicted = 0
        self._delayed = 0
        self._delay_seconds = 0.0

    # -- the hot path ----------------------------------------------------------

    def admit(self, key: str, count: int, now: float) -> int:
        """How many of ``count`` messages from ``key`` pass now; the rest are dropped."""
        clock = self._clock(now)
        full_at = self._lookup(key, clock)
        room = (self._depth - max(full_at - clock, 0)) // self._token
        allowed = count if count <= room else max(room, 0)
        if allowed:
            self._full_at[key] = max(full_at, clock) + allowed * self._token
            self._admitted += allowed
        if allowed < count:
            self._drop(key, count - allowed)
        return allowed

    def admit_exempting(
        self, key: str, items: list[T], pris: bytes | Sequence[int], now: float
    ) -> list[T]:
        """The items that pass: every exempt one, and as many of the others as the
        bucket takes, in order. ``pris[i]`` is the PRI of ``items[i]`` (0-191;
        the caller's default, user.notice, for a message without one), best a
        ``bytes``/``bytearray`` of one byte per message: then the count is
        three C loops and no object per message. Returns ``items`` itself when
        all pass."""
        raw = pris if isinstance(pris, (bytes, bytearray)) else bytes(pris)
        charged = self.charged(raw).count(1)
        self._exempt += len(items) - charged
        if not charged:
            self._clock(now)
            return items
        allowed = self.admit(key, charged, now)
        if allowed == charged:
            return items
        table, kept = self._charged, []
        for item, pri in zip(items, raw, strict=True):
            if not table[pri]:
                kept.append(item)
            elif allowed:
                kept.append(item)
                allowed -= 1
        return kept

    def charged(self, pris: bytes | bytearray) -> bytes | bytearray:
        """One byte per PRI of ``pris``: 1 where its message is charged, 0 where
        it is exempt (a C loop: no object per message)."""
        return pris.translate(self._charged)

    # -- delay mode ------------------------------------------------------------

    def wait_time(self, key: str, count: int, now: float) -> float:
        """Seconds until ``key``'s bucket can take ``count`` messages (0.0: now).

        A batch larger than ``burst`` is taken when the bucket is full, and
        leaves it that much below empty: the next batch waits for the debt.
        Does not charge; :meth:`delay` does.
        """
        clock = self._clock(now)
        return self._wait_units(self._full_at.get(key, clock), count, clock) / self._per_ns / NS

    def delay(self, key: str, count: int, now: float) -> float:
        """Charge ``count`` messages from ``key`` as of the moment the bucket can take
        them, and return the seconds to wait until then (0.0: none)."""
        clock = self._clock(now)
        full_at = self._lookup(key, clock)
        wait = self._wait_units(full_at, count, clock)
        self._full_at[key] = max(full_at, clock + wait) + count * self._token
        self._admitted += count
        if not wait:
            return 0.0
        seconds = wait / self._per_ns / NS
        self._delayed += 1
        self._delay_seconds += seconds
        return seconds

    def _wait_units(self, full_at: int, count: int, clock: int) -> int:
        need = min(count, self.burst) * self._token
        short = need - (self._depth - max(full_at - clock, 0))
        if short <= 0:
            return 0
        # Whole nanoseconds, rounded up: the bucket holds ``need`` at clock + wait.
        return -(-short // self._per_ns) * self._per_ns

    # -- the table and the clock -----------------------------------------------

    def _clock(self, now: float) -> int:
        # Time never goes back: a ``now`` below one already seen counts as that one.
        if now > self._now:
            self._now = now
            # Kept: the calls of one read share their ``now``, and the conversion
            # to exact units is a third of admit()'s cost.
            self._units = round(now * NS) * self._per_ns
        return self._units

    def _lookup(self, key: str, clock: int) -> int:
        table = self._full_at
        full_at = table.get(key)
        if full_at is not None:
            table.move_to_end(key)
            return full_at
        if len(table) >= self.max_keys:
            old, _ = table.popitem(last=False)
            self._evicted += 1
            if old in self._episodes:
                self._end(old, evicted=True)
        table[key] = clock
        return clock

    # -- episodes --------------------------------------------------------------

    def _drop(self, key: str, count: int) -> None:
        now = self._now
        self._dropped += count
        episode = self._episodes.get(key)
        if episode is not None and now - episode[1] >= self.interval:
            self._end(key)
            episode = None
        if episode is None:
            self._episodes[key] = [now, now, count]
            self._events.append(ThrottleStarted(key, now))
            return
        episode[1] = now
        episode[2] += count
        self._episodes.move_to_end(key)

    def _end(self, key: str, *, evicted: bool = False) -> None:
        started, last_drop, dropped = self._episodes.pop(key)
        self._events.append(ThrottleEnded(key, int(dropped), started, last_drop, evicted))
        self._top[key] = self._top.get(key, 0) + int(dropped)
        if len(self._top) > TOP_TABLE:
            # Bounded: keep the heaviest; a key trimmed here restarts its sum.
            heaviest = sorted(self._top.items(), key=lambda kv: kv[1], reverse=True)
            self._top = dict(heaviest[: TOP_TABLE // 10])

    @property
    def has_events(self) -> bool:
        """True when :meth:`take_events` has something to return without time passing."""
        return bool(self._events)

    def take_events(self, now: float) -> list[Event]:
        """The episodes started and ended since the last call, oldest first,
        including those of keys quiet for ``interval`` by ``now``."""
        self._clock(now)
        episodes = self._episodes
        while episodes:
            key, (_, last_drop, _) = next(iter(episodes.items()))
            if self._now - last_drop < self.interval:
                break
            self._end(key)
        events, self._events = self._events, []
        return events

    def end_all(self) -> list[Event]:
        """Every open episode ended now (the input is closing), with the events
        not taken yet: after it the log lines add up to the counters."""
        for key in list(self._episodes):
            self._end(key)
        events, self._events = self._events, []
        return events

    def statistics(self) -> RateLimitStatistics:
        totals = dict(self._top)
        for key, (_, _, dropped) in self._episodes.items():
            totals[key] = totals.get(key, 0) + int(dropped)
        top = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_KEYS]
        return RateLimitStatistics(
            keys=len(self._full_at),
            max_keys=self.max_keys,
            admitted=self._admitted,
            exempt=self._exempt,
            dropped=self._dropped,
            evicted=self._evicted,
            throttling=len(self._episodes),
            delayed=self._delayed,
            delay_seconds=self._delay_seconds,
            top=tuple(top),
        )
