"""relay/service/timer.py: a one-shot wait on a timerfd."""

from __future__ import annotations

import time

import trio
import trio.testing

from relay.service.timer import Timer


async def test_waits_what_was_asked_on_the_kernels_timer() -> None:
    timer = Timer()
    try:
        assert timer._fd >= 0  # Linux: a timerfd, not trio's sleep
        began = time.monotonic()
        await timer.sleep(0.02)
        assert 0.02 <= time.monotonic() - began < 5
    finally:
        timer.close()


async def test_a_cancelled_wait_leaves_nothing_behind() -> None:
    """An expiry nobody waited for must not end the next wait early."""
    timer = Timer()
    try:
        with trio.move_on_after(0.005):
            await timer.sleep(0.01)
        await trio.sleep(0.02)  # the first arming expires meanwhile, unread
        began = time.monotonic()
        await timer.sleep(0.05)
        assert time.monotonic() - began >= 0.05
    finally:
        timer.close()


def test_virtual_time_under_a_mock_clock() -> None:
    async def main() -> float:
        timer = Timer()
        began = trio.current_time()
        await timer.sleep(3600)
        timer.close()
        return trio.current_time() - began

    clock = trio.testing.MockClock(autojump_threshold=0)
    assert trio.run(main, clock=clock) == 3600
