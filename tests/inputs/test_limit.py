"""relay/inputs/limit.py: an input's rate limit, on trio's virtual clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.config import OnLimit, RateLimitConfig, RateLimitKey
from relay.inputs.limit import COUNTERS, InputLimit
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
