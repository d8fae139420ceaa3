"""Self-test of the interop harness (tests/interop/peers.py); needs no relay.

Proves the real peers behave as the relay's interop tests assume: util-linux
``logger`` sends one message per stdin line over octet-counted TCP, LF TCP
and UDP, and rsyslogd collects, forwards and records each message's bytes
unchanged.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trio

from tests.interop.peers import (
    RsyslogCollector,
    RsyslogSender,
    free_port,
    omfwd_action,
    omrelp_action,
    require_program,
)
from tests.waiting import await_until, wait_until

pytestmark = pytest.mark.interop

COUNT = 1000


def run_logger(port: int, transport: list[str], stdin: bytes) -> None:
    """Send each line of ``stdin`` as one RFC 5424 message, tagged "bench".

    ``--socket-errors=on`` makes a refused connection or failed send exit
    non-zero instead of being ignored.
    """
    logger = require_program("logger", "bsdutils")
    command = [logger, "-n", "127.0.0.1", "-P", str(port), *transport]
    command += ["--rfc5424", "-t", "bench", "--socket-errors=on"]
    subprocess.run(command, input=stdin, capture_output=True, check=True, timeout=60)


@pytest.mark.parametrize(
    "transport",
    [
        pytest.param(["-T", "--octet-count"], id="tcp-octet-counted"),
        pytest.param(["-T"], id="tcp-lf"),
        pytest.param(["-d"], id="udp"),
    ],
)
def test_logger_reaches_collector(
    rsyslog_collector: RsyslogCollector, transport: list[str]
) -> None:
    collector = rsyslog_collector
    port = collector.udp_port if "-d" in transport else collector.tcp_port
    run_logger(port, transport, b"".join(b"seq=%d\n" % i for i in range(COUNT)))

    lines = collector.wait_for_count(COUNT, timeout=20)

    assert collector.seqs() == collections.Counter(range(COUNT))
    assert len(lines) == COUNT
    for line in lines:
        # "<13>1 TIMESTAMP HOST bench - - [timeQuality ...] seq=N": user.notice,
        # RFC 5424, exactly as logger sent it.
        assert line.startswith(b"<13>1 "), line
        assert b" bench - - [timeQuality " in line, line
    assert lines[0].endswith(b"] seq=0")


def forwarded_lines(count: int) -> list[bytes]:
    # A tab and a control character: the harness must not rewrite them.
    return [b"<13>1 2024-01-01T00:00:00Z host app - - - seq=%d\tctl=\x01" % i for i in range(count)]


@pytest.mark.parametrize(
    "framing",
    [pytest.param("octet-counted", id="octet-counted"), pytest.param("traditional", id="lf")],
)
def test_sender_forwards_to_collector_over_omfwd(
    tmp_path: Path, rsyslog_collector: RsyslogCollector, framing: str
) -> None:
    collector = rsyslog_collector
    sent = forwarded_lines(COUNT)
    action = omfwd_action(collector.tcp_port, framing=framing)
    with RsyslogSender(tmp_path, action) as sender:
        sender.send_lines(sent)
        received = collector.wait_for_count(COUNT, timeout=20)
    assert received == sent


def test_sender_forwards_to_collector_over_omrelp(
    tmp_path: Path, rsyslog_collector: RsyslogCollector
) -> None:
    collector = rsyslog_collector
    sent = forwarded_lines(COUNT)
    with RsyslogSender(tmp_path, omrelp_action(collector.relp_port)) as sender:
        sender.send_lines(sent)
        received = collector.wait_for_count(COUNT, timeout=20)
    assert received == sent


def test_sender_loses_nothing_while_its_receiver_hangs(
    tmp_path: Path, rsyslog_collector: RsyslogCollector
) -> None:
    """The receiver answers nothing for 4 s (SIGSTOP) while the sender holds
    more than omrelp's window and its action queue: every message arrives.

    With rsyslog's default queue.timeoutEnqueue (2 s) the sender discarded a
    message each time its action queue stayed full for 2 s, silently (see
    ENQUEUE_TIMEOUT_MS): an omrelp -> relay -> imrelp test under load once
    missed two numbers the relay had never received."""
    collector = rsyslog_collector
    count = 20_000
    sent = forwarded_lines(count)
    with RsyslogSender(tmp_path, omrelp_action(collector.relp_port, window=1024)) as sender:
        os.kill(collector.pid, signal.SIGSTOP)
        try:
            sender.send_lines(sent)
            time.sleep(4)  # the hang under test (2 s is rsyslog's default), not synchronisation
        finally:
            os.kill(collector.pid, signal.SIGCONT)
        received = collector.wait_for_count(count, timeout=30)
    assert received == sent


def test_collector_stops_on_sigterm(tmp_path: Path) -> None:
    collector = RsyslogCollector(tmp_path).start()
    assert collector.pid_path.read_text().strip() == str(collector.pid)
    assert collector.stop(timeout=10) == 0
    assert not collector.running()


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_free_port_can_be_bound(kind: str) -> None:
    port = free_port(kind)
    sock_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, sock_type) as sock:
        sock.bind(("127.0.0.1", port))


def test_free_port_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="kind"):
        free_port("sctp")


def test_missing_program_fails_naming_the_package() -> None:
    with pytest.raises(pytest.fail.Exception, match="apt-get install some-package"):
        require_program("relay-no-such-program", "some-package")


def test_wait_until_reports_message_and_last_value() -> None:
    values = iter(range(1000))
    with pytest.raises(AssertionError, match=r"never: timed out after 0.05s; last value: 0"):
        wait_until(lambda: 0 * next(values), timeout=0.05, interval=0.01, message="never")
    assert wait_until(lambda: next(values) >= 3 and "done", timeout=1.0) == "done"


async def test_await_until_accepts_async_predicates() -> None:
    state = {"n": 0}

    async def grows() -> int:
        await trio.sleep(0)
        state["n"] += 1
        return state["n"] if state["n"] >= 3 else 0

    assert await await_until(grows, timeout=1.0, interval=0.001) == 3
    with pytest.raises(AssertionError, match=r"still empty: timed out .* last value: \[\]"):
        await await_until(lambda: [], timeout=0.05, message=lambda: "still empty")
