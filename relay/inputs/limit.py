"""An input's per-source rate limit: the thin trio part around ``policy/ratelimit``.

:class:`InputLimit` charges each batch to its key and either drops what is
over the rate (:meth:`InputLimit.admit`, any input) or says how long the
connection must wait (:meth:`InputLimit.delay`, stream inputs: the caller
awaits it before queueing, so it reads nothing meanwhile and the sender is
slowed; nothing is lost). It logs each throttling episode's start and end
(:func:`relay.policy.ratelimit.format_event`), on every call that produced
events and once an interval from :meth:`InputLimit.run`, so that a key that
went quiet gets its end line; :meth:`InputLimit.close` ends every open episode
at the stop. The ``rate_limited`` counter is the sum of the end lines.

The key is the batch's source address or, for a local socket input, the
sender's pid as the kernel reported it (one dictionary lookup per batch), or
the HOSTNAME or APP-NAME of each message (a parse per message; the batch is
charged one run of equal keys at a time).
"""

from __future__ import annotations

import collections
import itertools
import logging

import trio

from relay.config import InputConfig, OnLimit, RateLimitConfig, RateLimitKey
from relay.message import Batch
from relay.policy.filter import peer_host
from relay.policy.ratelimit import Event, RateLimiter, ThrottleEnded, format_event
from relay.policy.stage import header_fields, pris
from relay.stats import Counters

log = logging.getLogger("relay.input")

COUNTERS = ("rate_limited", "rate_limit_delays")
# Episode lines an input logs per interval; past it, one summary line an
# interval with the sums (a flood from a million spoofed addresses would
# otherwise log two lines for each).
MAX_LINES = 50


# Keys that are properties of the whole batch.
_PER_BATCH = (RateLimitKey.SOURCE, RateLimitKey.PID)


def _batch_key(key: RateLimitKey, batch: Batch) -> str:
    """A per-batch key: the source address, or the pid ("-" without credentials)."""
    if key is RateLimitKey.PID:
        return "pid -" if batch.creds is None else f"pid {batch.creds[0]}"
    return peer_host(batch.peer)


def for_input(config: InputConfig, counters: Counters) -> InputLimit | None:
    """The input's rate limit, or None when it has none."""
    if config.rate_limit is None:
        return None
    return InputLimit(config.name, config.rate_limit, counters)


class InputLimit:
    def __init__(self, input_name: str, config: RateLimitConfig, counters: Counters) -> None:
        self.name = input_name
        self.config = config
        self.counters = counters
        self.limiter = RateLimiter(
            config.rate,
            config.burst,
            exempt_severity=config.exempt_severity,
            max_keys=config.max_keys,
            interval=config.interval,
        )
        self.delaying = config.on_limit is OnLimit.DELAY
        self._window_start = float("-inf")  # the interval that MAX_LINES counts in
        self._lines = 0
        self._unlogged_started = self._unlogged_ended = self._unlogged_dropped = 0

    def admit(self, batch: Batch) -> Batch | None:
        """The part of ``batch`` within the rate (``batch`` itself when all of it
        is), or None when nothing is; what is dropped is counted."""
        now = trio.current_time()
        limiter = self.limiter
        messages = batch.messages
        exempting = self.config.exempt_severity is not None
        if self.config.key in _PER_BATCH:
            key = _batch_key(self.config.key, batch)
            if exempting:
                kept = limiter.admit_exempting(key, messages, bytes(pris(messages)), now)
            else:
                allowed = limiter.admit(key, len(messages), now)
                kept = messages if allowed == len(messages) else messages[:allowed]
        else:
            kept = self._admit_by_field(batch, now)
        if limiter.has_events:
            self._log(now)
        if kept is messages:
            return batch
        self.counters.add("rate_limited", len(messages) - len(kept))
        if not kept:
            return None
        return batch.with_messages(kept)

    def _admit_by_field(self, batch: Batch, now: float) -> list[bytes]:
        """:meth:`admit` for a key read from each message, one run of equal keys at a time."""
        messages = batch.messages
        keys = self._keys(batch)
        priorities = pris(messages) if self.config.exempt_severity is not None else None
        kept: list[bytes] = []
        start = 0
        for end in range(1, len(messages) + 1):
            if end < len(messages) and keys[end] == keys[start]:
                continue
            run = messages[start:end]
            if priorities is not None:
                kept += self.limiter.admit_exempting(
                    keys[start], run, bytes(priorities[start:end]), now
                )
            else:
                kept += run[: self.limiter.admit(keys[start], len(run), now)]
            start = end
        return messages if len(kept) == len(messages) else kept

    def _keys(self, batch: Batch) -> list[str]:
        """Each message's HOSTNAME (lower case) or APP-NAME; "-" when it has none."""
        field = 0 if self.config.key is RateLimitKey.HOSTNAME else 1
        keys = []
        for raw in batch.messages:
            fields = header_fields(raw, batch.received)
            keys.append((fields[field] if fields is not None else "") or "-")
        return keys

    async def apply(self, batch: Batch) -> Batch | None:
        """``batch`` within the rate: :meth:`admit`'s part of it, or (``on_limit =
        "delay"``) all of it once :meth:`delay` has waited."""
        if not self.delaying:
            return self.admit(batch)
        await self.delay(batch)
        return batch

    async def delay(self, batch: Batch) -> None:
        """Wait until ``batch`` is within the rate (charged now, as of then)."""
        now = trio.current_time()
        messages = batch.messages
        charged: bytes | bytearray | None = None  # 1: charged, 0: exempt; None: all charged
        count = len(messages)
        if self.config.exempt_severity is not None:
            charged = self.limiter.charged(bytes(pris(messages)))
            count = charged.count(1)
            if not count:
                return
        if self.config.key in _PER_BATCH:
            wait = self.limiter.delay(_batch_key(self.config.key, batch), count, now)
        else:
            keys = self._keys(batch)
            if charged is not None:
                keys = list(itertools.compress(keys, charged))
            counts = collections.Counter(keys)
            wait = max(self.limiter.delay(k, n, now) for k, n in counts.items())
        if wait:
            self.counters.add("rate_limit_delays")
            await trio.sleep(wait)

    async def run(self) -> None:
        """Once an interval: log the episodes of keys that went quiet."""
        while True:
            await trio.sleep(self.config.interval)
            self._log(trio.current_time())

    def close(self) -> None:
        """At the stop: end every open episode, so the lines add up to the counter."""
        for event in self.limiter.end_all():
            self._say(event)
        self._summarise()

    def _log(self, now: float) -> None:
        if now - self._window_start >= self.config.interval:
            self._summarise()
            self._window_start, self._lines = now, 0
        for event in self.limiter.take_events(now):
            self._say(event)

    def _say(self, event: Event) -> None:
        if self._lines >= MAX_LINES:
            # A flood from many (spoofed) sources: their lines are summed up,
            # once an interval, so that the log stays small and still adds up.
            if isinstance(event, ThrottleEnded):
                self._unlogged_ended += 1
                self._unlogged_dropped += event.dropped
            else:
                self._unlogged_started += 1
            return
        self._lines += 1
        line = format_event(event, float(self.limiter.rate), self.limiter.burst)
        log.warning("input %s: %s", self.name, line)

    def _summarise(self) -> None:
        started, ended = self._unlogged_started, self._unlogged_ended
        if not started and not ended:
            return
        dropped = self._unlogged_dropped
        noun = "message" if dropped == 1 else "messages"
        log.warning(
            "input %s: rate limit: %s more keys started throttling and %s more ended, "
            "%s %s dropped (at most %d lines an interval)",
            self.name,
            f"{started:,}",
            f"{ended:,}",
            f"{dropped:,}",
            noun,
            MAX_LINES,
        )
        self._unlogged_started = self._unlogged_ended = self._unlogged_dropped = 0
