"""Exponential back-off with jitter, as a value.

``Backoff().increment()`` is the policy after one more failure; ``delay(r)`` is
the wait before the next attempt for a random number ``r`` in [0, 1), so tests
drive it with plain numbers. The cap doubles with each failure (``initial``,
then twice that, up to ``maximum``) and the wait is drawn uniformly between a
tenth of the cap and all of it: the jitter keeps thousands of hosts that lost
the same collector from reconnecting in lock-step when it returns, and the
floor keeps a failing target from being retried at once.
"""

from __future__ import annotations

import dataclasses

# The first retry comes quickly (a collector restart takes about a second);
# the wait doubles up to ``maximum`` so that a long outage costs a reconnect
# attempt every half minute or so, not a busy loop.
DEFAULT_INITIAL = 0.1
DEFAULT_MAXIMUM = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = DEFAULT_INITIAL
    maximum: float = DEFAULT_MAXIMUM
    multiplier: float = 2.0
    failures: int = 0

    def increment(self) -> Backoff:
        """The policy after one more consecutive failure."""
        return dataclasses.replace(self, failures=self.failures + 1)

    def reset(self) -> Backoff:
        """The policy after a success (itself if nothing failed: this runs
        after every write, and dataclasses.replace costs about 10 us)."""
        if not self.failures:
            return self
        return dataclasses.replace(self, failures=0)

    def cap(self) -> float:
        """Upper bound of the next wait."""
        if self.failures == 0:
            return 0.0
        exponent = min(self.failures - 1, 64)
        return min(self.maximum, self.initial * self.multiplier**exponent)

    def delay(self, random: float) -> float:
        """The wait before the next attempt, for ``random`` in [0, 1)."""
        cap = self.cap()
        # Never less than a tenth of the cap, so a failing target is not hammered.
        return cap * (0.1 + 0.9 * random)
