"""A relay's resident memory against its spool's budget, with the output down.

A real relay process fed over TCP as fast as it reads, its collector down, so
that the memory part of the spool fills to ``queue_max_bytes`` and the rest
goes to disk; then every message is delivered, once, to a real rsyslog
collector after a restart. 90-byte LF-framed messages: one Python object
each, the case where what the messages take in memory is furthest above
their bytes (half as much again).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from relay.cli.sender import SendPlan, build_messages
from relay.config import Endpoint
from tests.interop.peers import (
    LOOPBACK,
    RelayProcess,
    RsyslogCollector,
    free_port,
    process_memory_kib,
    relay_counters,
    relay_stats,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

MIB = 1024 * 1024
BUDGET = 32 * MIB  # queue_max_bytes
# Issue 14: peak RSS at most the memory budget + 48 MiB, whatever the load.
ISSUE_BOUND = 48 * MIB
# What man/relay.toml.5 says comes on top of the resident memory at rest and
# the budget with one input and one output (measured 1-5 MiB).
OVERHEAD = 16 * MIB
COUNT = 500_000  # 43 MiB of messages, 70 MiB in memory: about half spills to disk
SIZE = 90


def queued(config: Path) -> int:
    spool = relay_stats(config)["outputs"]["central"]["queued"]
    return int(spool["memory"]["messages"] + spool["disk"]["messages"])


def test_a_full_memory_spool_stays_within_its_budget(tmp_path: Path) -> None:
    port = free_port()
    collector = RsyslogCollector(tmp_path)  # ports chosen; started after the stop
    config = tmp_path / "relay.toml"
    config.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"

[input.tcp]
url = "tcp://{LOOPBACK}:{port}"

[output.central]
url = "tcp://{LOOPBACK}:{collector.tcp_port}"
queue_max_bytes = "{BUDGET // MIB} MiB"
queue_max_messages = 100000000
retry_max = 0.5
""")
    plan = SendPlan(endpoint=Endpoint("tcp", LOOPBACK, port), size=SIZE)
    relay = RelayProcess(["-c", str(config)], tmp_path / "run1")
    with relay.start():
        relay.wait_for_tcp(port)
        baseline = process_memory_kib(relay.pid, "VmRSS") * 1024
        with socket.create_connection((LOOPBACK, port)) as sock:
            for first in range(0, COUNT, 50_000):
                sock.sendall(b"\n".join(build_messages(plan, first, first + 50_000)) + b"\n")
        wait_until(lambda: queued(config) == COUNT, 120, message=relay.log_tail)
        peak = process_memory_kib(relay.pid, "VmHWM") * 1024
        stats = relay_stats(config)["outputs"]["central"]["queued"]
        print(
            f"baseline {baseline / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB; in memory"
            f" {stats['memory']['messages']} messages ({stats['memory']['bytes'] / MIB:.1f} MiB),"
            f" on disk {stats['disk']['messages']}"
        )
        assert stats["disk"]["messages"] > 0  # memory did fill
        assert peak <= BUDGET + ISSUE_BOUND, (baseline, peak)
        assert peak <= baseline + BUDGET + OVERHEAD, (baseline, peak)
        assert relay.terminate(timeout=60) == 0, relay.log_tail()
    assert f"{COUNT} messages not delivered yet are kept" in relay.log()
    assert relay_counters(relay.log(), "input", "tcp")["received"] == COUNT

    with collector:
        again = RelayProcess(["-c", str(config)], tmp_path / "run2")
        with again.start():
            again.wait_for_tcp(port)
            collector.wait_for_count(COUNT, timeout=180)
            assert again.terminate(timeout=30) == 0, again.log_tail()
    seqs = collector.seqs()
    assert set(seqs) == set(range(COUNT))
    assert max(seqs.values()) == 1  # none twice
    assert "Traceback" not in relay.log() + again.log()
