"""No client can stop the relay: fuzzed input on every kind of input of one relay.

One relay (tcp, octet-counted and LF-only tcp, tls, relp, relp+tls, tcp with
the PROXY protocol, udp and unix inputs; its own file output) runs for the
whole test while good clients stream numbered messages to six of them.
Hypothesis (derandomized, so CI sees the same cases every run) draws a few
hundred cases, valid-shaped traffic and mutations of it
(tests/interop/fuzzcases.py), each played on its own connection
(tests/interop/fuzzrig.py). After each case the relay
still runs and has logged no traceback; every few cases every good stream's
latest message has arrived; at the end every good message arrived exactly
once and SIGTERM stops the relay with status 0. ``scripts/fuzz`` runs the
same for as long as you like.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.fuzzcases import EVENTS, KNOWN_CASES, TARGETS
from tests.interop.fuzzer import Fuzzer

# The rig checks that good messages keep flowing after each batch of cases: alone.
pytestmark = [pytest.mark.interop, pytest.mark.serial]

CASES = 500


def test_fuzzed_input_never_stops_the_relay_nor_loses_a_good_message(tmp_path: Path) -> None:
    fuzzer = Fuzzer(tmp_path)
    fuzzer.start()
    try:
        for case in KNOWN_CASES:  # the bug that made this test: one RELP client stopped it
            fuzzer.play(case)
        fuzzer.run(CASES)
        problems = fuzzer.finish()
    finally:
        if fuzzer.rig is not None:
            fuzzer.rig.kill()
    assert not problems, "\n".join(problems)
    # Both branches were reached, on every input: the cases were not all rejected early.
    assert EVENTS["valid-shaped, not mutated"] > 20 and EVENTS["mutated"] > 20, EVENTS
    assert set(fuzzer.targets) == set(TARGETS), fuzzer.targets
    proxy = sum(n for what, n in EVENTS.items() if what.startswith("proxy: "))
    assert proxy > 20, EVENTS  # the PROXY input's headers, of every kind
    counts = fuzzer.rig.good_counts() if fuzzer.rig else {}
    assert min(counts.values()) > 100, counts
