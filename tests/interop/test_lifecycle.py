"""Start, stop and signals of the relay process, as systemd and an operator see them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.interop.peers import RelayProcess, RsyslogCollector, free_port, wait_until

pytestmark = pytest.mark.interop


def send(port: int, count: int, start: int = 0) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay",
            "send",
            f"tcp://127.0.0.1:{port}",
            "--count",
            str(count),
            "--start",
            str(start),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def relay_with_dead_upstream(tmp_path: Path, stop_timeout: float) -> tuple[RelayProcess, int, Path]:
    """A relay whose TCP upstream refuses connections, with a file copy beside it."""
    port, dead = free_port(), free_port()
    copy = tmp_path / "copy.log"
    relay = RelayProcess(
        [
            "--input",
            f"tcp://127.0.0.1:{port}",
            "--output",
            f"tcp://127.0.0.1:{dead}",
            "--output",
            f"file://{copy}",
            "--stop-timeout",
            str(stop_timeout),
        ],
        tmp_path / "relay",
    )
    return relay, port, copy


def test_stop_with_upstream_down_keeps_the_budget_and_reports_the_loss(tmp_path: Path) -> None:
    relay, port, copy = relay_with_dead_upstream(tmp_path, stop_timeout=2)
    with relay.start():
        relay.wait_for_tcp(port)
        send(port, 10)
        wait_until(lambda: len(lines(copy)) == 10, 10, message="file output incomplete")
        started = time.monotonic()
        status = relay.terminate(timeout=10)
        took = time.monotonic() - started
    log = relay.log()
    assert 2 <= took < 6, log
    assert status == 1  # messages were lost: systemd shows the unit as failed
    assert "stop budget of 2 s used up" in log
    assert "10 messages could not be delivered before the stop" in log
    assert "Connection refused" in log
    assert "Traceback" not in log


def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    relay, port, copy = relay_with_dead_upstream(tmp_path, stop_timeout=600)
    with relay.start():
        relay.wait_for_tcp(port)
        send(port, 3)
        wait_until(lambda: len(lines(copy)) == 3, 10, message="file output incomplete")
        os.kill(relay.pid, signal.SIGTERM)
        wait_until(lambda: "send the signal again to stop now" in relay.log(), 10)
        status = relay.terminate(timeout=10)  # the second SIGTERM
    assert status == 1
    assert "second SIGTERM; stopping now" in relay.log()


def test_stop_delivers_what_is_queued(tmp_path: Path, rsyslog_collector: RsyslogCollector) -> None:
    port = free_port()
    relay = RelayProcess(
        [
            "--input",
            f"tcp://127.0.0.1:{port}",
            "--output",
            f"tcp://127.0.0.1:{rsyslog_collector.tcp_port}",
        ],
        tmp_path / "relay",
    )
    with relay.start():
        relay.wait_for_tcp(port)
        send(port, 20_000)
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    seqs = rsyslog_collector.wait_for_count(20_000) and rsyslog_collector.seqs()
    assert sorted(seqs) == list(range(20_000))


def test_sighup_reopens_file_outputs(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "all.log"
    relay = RelayProcess(
        ["--input", f"tcp://127.0.0.1:{port}", "--output", f"file://{out}"], tmp_path / "relay"
    )
    with relay.start():
        relay.wait_for_tcp(port)
        send(port, 5)
        wait_until(lambda: len(lines(out)) == 5, 10)
        out.rename(tmp_path / "all.log.1")  # what logrotate does
        os.kill(relay.pid, signal.SIGHUP)
        wait_until(lambda: "reopened" in relay.log(), 10)
        send(port, 5, start=5)
        wait_until(lambda: len(lines(out)) == 5, 10)
        assert relay.terminate() == 0
    assert [line.split(b"seq=")[1] for line in lines(tmp_path / "all.log.1")] == [
        b"0",
        b"1",
        b"2",
        b"3",
        b"4",
    ]
    assert [line.split(b"seq=")[1] for line in lines(out)] == [b"5", b"6", b"7", b"8", b"9"]
