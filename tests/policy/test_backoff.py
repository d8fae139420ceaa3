"""relay/policy/backoff.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.policy.backoff import Backoff


def test_grows_exponentially_to_the_maximum() -> None:
    policy = Backoff(initial=0.1, maximum=30.0)
    caps = []
    for _ in range(12):
        policy = policy.increment()
        caps.append(policy.cap())
    assert caps[:4] == [0.1, 0.2, 0.4, 0.8]
    assert caps[-1] == 30.0
    assert policy.reset().cap() == 0.0


@given(st.integers(min_value=1, max_value=500), st.floats(min_value=0, max_value=0.999999))
def test_delay_is_jittered_within_bounds(failures: int, random: float) -> None:
    policy = Backoff(failures=failures)
    delay = policy.delay(random)
    assert 0.1 * policy.cap() <= delay <= policy.cap() <= policy.maximum


def test_a_reset_without_failures_is_the_same_policy() -> None:
    """It runs after every write: nothing to rebuild (dataclasses.replace
    costs about 10 us)."""
    policy = Backoff(initial=0.1, maximum=30.0)
    assert policy.reset() is policy
    assert policy.increment().reset() == policy
