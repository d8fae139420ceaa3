"""Showing that a hypothesis test reaches each branch it checks.

A property behind an ``if`` proves nothing when the ``if`` is never true
(random bytes rarely make a valid frame). Such a test builds valid-shaped
inputs, names its branches, notes the one each example takes (also as a
``hypothesis.event``, shown by ``--hypothesis-show-statistics``) and, after
the run, asserts that every branch was reached::

    def test_x() -> None:
        branches = Branches("valid", "rejected")

        @given(...)
        def check(...) -> None:
            ...
            branches.reach("valid")

        check()
        branches.assert_all_reached()
"""

from __future__ import annotations

from collections import Counter

from hypothesis import event


class Branches:
    def __init__(self, *names: str) -> None:
        self.names = names
        self.seen: Counter[str] = Counter()

    def reach(self, name: str) -> None:
        """Note that this example took branch ``name``."""
        assert name in self.names, f"unknown branch {name!r}"
        event(name)
        self.seen[name] += 1

    def assert_all_reached(self) -> None:
        missing = [name for name in self.names if not self.seen[name]]
        assert not missing, f"never reached: {missing}; reached: {dict(self.seen)}"
