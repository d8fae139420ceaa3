"""relp:// in and out against rsyslog's omrelp and imrelp, counting by sequence number."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.interop.peers import (
    RelayProcess,
    RsyslogCollector,
    RsyslogSender,
    assert_each_arrived,
    feed_through_outage,
    free_port,
    omrelp_action,
    relay_counters,
    shortfall,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop


def write_config(path: Path, relp_port: int, tcp_port: int, collector: int) -> Path:
    path.write_text(f"""\
[relay]
state_dir = "{path.parent / "state"}"
stop_timeout = 20

[input.relp]
url = "relp://127.0.0.1:{relp_port}"

[input.tcp]
url = "tcp://127.0.0.1:{tcp_port}"

[output.central]
url = "relp://127.0.0.1:{collector}"
retry_max = 0.5
window = 4096
""")
    return path


def line(seq: int) -> bytes:
    return b"<13>1 2026-01-01T00:00:00Z host app - - - seq=%d %s" % (seq, b"x" * 150)


def test_omrelp_to_relay_to_imrelp_every_message_once(tmp_path: Path) -> None:
    count = 200_000
    collector = RsyslogCollector(tmp_path)
    relp_port, tcp_port = free_port(), free_port()
    config = write_config(tmp_path / "relay.toml", relp_port, tcp_port, collector.relp_port)
    relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
    sender = RsyslogSender(tmp_path, omrelp_action(relp_port, window=4096))
    with collector, relay.start():
        relay.wait_for_tcp(relp_port)
        with sender:
            started = time.monotonic()
            sender.send_lines(line(i) for i in range(count))
            wait_until(
                lambda: len(collector.seqs()) >= count,
                60,
                message=lambda: shortfall(collector, count, config, "relp"),
            )
            took = time.monotonic() - started
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    assert_each_arrived(collector, relay, count, what="omrelp -> relay -> imrelp", took=took)


def test_imrelp_killed_mid_stream_and_restarted_loses_nothing(tmp_path: Path) -> None:
    """The imrelp collector hangs (SIGSTOP) at ~30% for 0.5 s, with messages in
    flight, is SIGKILLed and restarted 5 s later: every number arrives; the
    relay sent the unanswered ones again, and duplicates are at most that."""
    count = 200_000
    collector = RsyslogCollector(tmp_path, direct=True)
    relp_port, tcp_port = free_port(), free_port()
    config = write_config(tmp_path / "relay.toml", relp_port, tcp_port, collector.relp_port)
    relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
    with collector, relay.start():
        relay.wait_for_tcp(tcp_port)
        took = feed_through_outage(relay, collector, tcp_port, count, hang=0.5)
    assert_each_arrived(collector, relay, count, what="imrelp killed at 30%", took=took)
    resent = relay_counters(relay.log(), "output", "central").get("resent", 0)
    assert resent > 0, "nothing was in flight when the collector died: the test proved nothing"
