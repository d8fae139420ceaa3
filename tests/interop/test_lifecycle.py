"""Start, stop and signals of the relay process, as systemd and an operator see them."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.interop.peers import (
    RelayProcess,
    RsyslogCollector,
    free_port,
    relay_send,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop


def send(port: int, count: int, start: int = 0) -> None:
    relay_send(port, count, start=start)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def relay_with(
    tmp_path: Path,
    upstream: int,
    stop_timeout: float,
    extra: str = "",
) -> tuple[RelayProcess, int, Path]:
    """A relay forwarding to ``upstream`` over TCP, with a file copy beside it."""
    port = free_port()
    copy = tmp_path / "copy.log"
    config = tmp_path / "relay.toml"
    config.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"
stop_timeout = {stop_timeout}
[input.tcp]
url = "tcp://127.0.0.1:{port}"
[output.up]
url = "tcp://127.0.0.1:{upstream}"
{extra}
[output.copy]
url = "file://{copy}"
""")
    return RelayProcess(["-c", str(config)], tmp_path / "relay"), port, copy


def test_stop_with_upstream_down_saves_and_exits_at_once(tmp_path: Path) -> None:
    """An output whose upstream is down does not wait out the stop budget: what it
    holds goes to disk, and the relay exits 0."""
    relay, port, copy = relay_with(tmp_path, free_port(), stop_timeout=60)
    with relay.start():
        relay.wait_for_tcp(port)
        send(port, 10)
        wait_until(lambda: len(lines(copy)) == 10, 10, message="file output incomplete")
        wait_until(lambda: "Connection refused" in relay.log(), 10)
        started = time.monotonic()
        status = relay.terminate(timeout=10)
        took = time.monotonic() - started
    log = relay.log()
    assert status == 0, log
    assert took < 5, log
    assert "output up: 10 messages not delivered yet are kept in" in log
    assert "Traceback" not in log


def test_stop_without_disk_keeps_the_budget_and_reports_the_loss(tmp_path: Path) -> None:
    relay, port, copy = relay_with(
        tmp_path, free_port(), stop_timeout=2, extra="disk_max_bytes = 0"
    )
    with relay.start():
        relay.wait_for_tcp(port)
        send(port, 10)
        wait_until(lambda: len(lines(copy)) == 10, 10, message="file output incomplete")
        status = relay.terminate(timeout=10)
    log = relay.log()
    assert status == 1  # messages were lost: systemd shows the unit as failed
    assert "output up: 10 messages were lost at the stop" in log
    assert "no disk: disk_max_bytes = 0" in log
    assert "Traceback" not in log


def test_second_signal_stops_the_drain_at_once(tmp_path: Path) -> None:
    """A collector that accepts but never reads: the output is not failing, so the
    stop waits to deliver; a second SIGTERM ends the wait, and all is saved."""
    with socket.socket() as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.bind(("127.0.0.1", 0))
        stuck.listen()
        relay, port, copy = relay_with(tmp_path, stuck.getsockname()[1], stop_timeout=600)
        with relay.start():
            relay.wait_for_tcp(port)
            send(port, 20_000)
            wait_until(lambda: len(lines(copy)) == 20_000, 30, message="file output incomplete")
            os.kill(relay.pid, signal.SIGTERM)
            wait_until(lambda: "send the signal again to stop now" in relay.log(), 10)
            status = relay.terminate(timeout=10)  # the second SIGTERM
    log = relay.log()
    assert status == 0, log
    assert "second SIGTERM; stopping now" in log
    assert "messages not delivered yet are kept in" in log


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
