"""relay/inputs/limit.py: an input's rate limit, on trio's virtual clock."""

from __future__ import annotations

import logging
import re

import pytest
import trio
import trio.testing

from relay.config import OnLimit, RateLimitConfig, RateLimitKey
from relay.inputs.limit import COUNTERS, MAX_LINES, InputLimit
from relay.message import Batch
from relay.stats import Counters

CRIT, NOTICE = 8 + 2, 8 + 5  # user.crit, user.notice


def delaying(key: RateLimitKey) -> InputLimit:
    config = RateLimitConfig(
        rate=10, burst=10, key=key, on_limit=OnLimit.DELAY, exempt_severity=CRIT & 7
    )
    return InputLimit("t", config, Counters("input", "t", COUNTERS))


def batch(pri: int, count: int) -> Batch:
    messages = [b"<%d>1 - host1 app1 - - - n=%d" % (pri, i) for i in range(count)]
    return Batch(messages, received=0.0, peer="127.0.0.1:5000", input="t")


async def waited(limit: InputLimit, batch: Batch) -> float:
    start = trio.current_time()
    await limit.delay(batch)
    return trio.current_time() - start


@pytest.mark.parametrize("key", list(RateLimitKey))
async def test_delay_charges_no_exempt_message(
    key: RateLimitKey, autojump_clock: trio.testing.MockClock
) -> None:
    limit = delaying(key)
    assert await waited(limit, batch(CRIT, 100)) == 0
    # The bucket is still full: a burst of charged messages passes at once,
    # and only the next one waits, for one token.
    assert await waited(limit, batch(NOTICE, 10)) == 0
    assert await waited(limit, batch(NOTICE, 1)) == pytest.approx(0.1)
    assert limit.counters["rate_limit_delays"] == 1


@pytest.mark.parametrize("key", list(RateLimitKey))
async def test_delay_of_a_mixed_batch_charges_its_other_messages(
    key: RateLimitKey, autojump_clock: trio.testing.MockClock
) -> None:
    limit = delaying(key)
    mixed = Batch(
        batch(CRIT, 5).messages + batch(NOTICE, 10).messages,
        received=0.0,
        peer="127.0.0.1:5000",
        input="t",
    )
    assert await waited(limit, mixed) == 0
    assert await waited(limit, batch(NOTICE, 2)) == pytest.approx(0.2)


async def test_a_flood_from_many_sources_logs_a_bounded_number_of_lines_that_add_up(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    """Hundreds of sources over their rate: at most MAX_LINES episode lines an
    interval, then one summary line; the dropped counts in all lines add up to
    the counter."""
    config = RateLimitConfig(rate=1, burst=1, interval=1.0)
    limit = InputLimit("t", config, Counters("input", "t", COUNTERS))
    caplog.set_level(logging.WARNING, logger="relay.input")
    for source in range(500):
        peer = f"127.0.{source // 250}.{source % 250 + 1}:5000"
        admitted = limit.admit(Batch([b"<13>x"] * 3, received=0.0, peer=peer, input="t"))
        assert admitted is not None and len(admitted.messages) == 1
    await trio.sleep(1.5)
    limit.admit(Batch([b"<13>x"], received=0.0, peer="127.0.9.9:5000", input="t"))
    limit.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 2 * (MAX_LINES + 1)
    assert any("more keys started throttling" in line for line in lines)
    dropped = sum(
        int(m.group(1).replace(",", ""))
        for line in lines
        if (m := re.search(r"([\d,]+) messages? dropped", line))
    )
    assert dropped == limit.counters["rate_limited"] == 1000
