"""idle_timeout against real senders: rsyslog's omfwd and omrelp lose nothing
when relay closes their quiet connection (relay.toml(5) says they reconnect)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.peers import (
    RelayProcess,
    RsyslogCollector,
    RsyslogSender,
    free_port,
    omfwd_action,
    omrelp_action,
    relay_counters,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop


def established(port: int) -> int:
    """Connections to local ``port`` that are open now (from /proc/net/tcp{,6})."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                local, state = row.split()[1], row.split()[3]
                count += int(local.rsplit(":", 1)[1], 16) == port and state == "01"
    return count


def line(seq: int) -> bytes:
    return b"<13>1 2026-01-01T00:00:00Z host app - - - seq=%d" % seq


@pytest.mark.parametrize("scheme", ["tcp", "relp"])
def test_a_sender_whose_quiet_connection_was_closed_loses_nothing(
    tmp_path: Path, scheme: str
) -> None:
    collector = RsyslogCollector(tmp_path)
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f"""\
[relay]
state_dir = "{tmp_path / "state"}"
[input.in]
url = "{scheme}://127.0.0.1:{port}"
idle_timeout = 0.5
[output.central]
url = "tcp://127.0.0.1:{collector.tcp_port}"
"""
    )
    relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
    action = omfwd_action(port) if scheme == "tcp" else omrelp_action(port)
    with collector, relay.start():
        relay.wait_for_tcp(port)
        with RsyslogSender(tmp_path, action) as sender:
            for round_ in range(3):  # a burst, then quiet until relay closes the connection
                sender.send_lines(line(round_ * 10 + i) for i in range(10))
                sent = (round_ + 1) * 10
                wait_until(lambda: len(collector.seqs()) >= sent, 20)  # noqa: B023
                wait_until(
                    lambda: established(port) == 0,
                    20,
                    message=lambda: f"no idle close; log:\n{relay.log_tail()}",
                )
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    seqs = collector.seqs()
    assert sorted(seqs) == list(range(30)), seqs
    assert all(n == 1 for n in seqs.values()), seqs
    assert relay_counters(relay.log(), "input", "in")["idle_timeouts"] >= 3
