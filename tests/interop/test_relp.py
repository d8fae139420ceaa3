"""relp:// in and out against rsyslog's omrelp and imrelp, counting by sequence number."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.interop.peers import (
    RelayProcess,
    RelaySendProcess,
    RsyslogCollector,
    RsyslogSender,
    free_port,
    omrelp_action,
    outage,
    relay_counters,
    wait_until,
)

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
                message=lambda: f"collector has {len(collector.seqs())} of {count}",
            )
            took = time.monotonic() - started
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    seqs = collector.seqs()
    duplicates = sum(n - 1 for n in seqs.values())
    resent = relay_counters(relay.log(), "output", "central").get("resent", 0)
    print(f"omrelp -> relay -> imrelp: {count} in {took:.1f} s,", end=" ")
    print(f"{duplicates} duplicates, {resent} resent")
    assert set(seqs) == set(range(count))
    assert duplicates <= resent, (duplicates, resent)


def test_imrelp_killed_mid_stream_and_restarted_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL of the imrelp collector at ~30%, restarted 5 s later: every number
    arrives; duplicates are at most what the relay counted as resent."""
    count = 200_000
    collector = RsyslogCollector(tmp_path, direct=True)
    relp_port, tcp_port = free_port(), free_port()
    config = write_config(tmp_path / "relay.toml", relp_port, tcp_port, collector.relp_port)
    relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
    with collector, relay.start():
        relay.wait_for_tcp(tcp_port)
        started = time.monotonic()
        with RelaySendProcess(tcp_port, count, size=200, rate=50_000) as feed:
            outage(collector, seqs=lambda: len(collector.seqs()), after=count * 3 // 10)
            feed.finish(timeout=60)
        wait_until(
            lambda: set(range(count)) <= set(collector.seqs()),
            60,
            message=lambda: f"missing {count - len(set(collector.seqs()) & set(range(count)))}",
        )
        took = time.monotonic() - started
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    seqs = collector.seqs()
    duplicates = sum(n - 1 for n in seqs.values())
    log = relay.log()
    resent = relay_counters(log, "output", "central").get("resent", 0)
    print(f"imrelp killed at 30%: {count} in {took:.1f} s,", end=" ")
    print(f"{duplicates} duplicates, {resent} resent")
    assert resent == 0 or "messages not all acknowledged" in log
    assert duplicates <= resent, (duplicates, resent)
