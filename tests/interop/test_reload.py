"""Reload on SIGHUP (issue 11, done-when 3): an invalid config changes nothing;
a valid one adds, changes and removes outputs during a stream over one TCP
connection, and no message is lost.

The sender is the test itself, over one connection it keeps open: every
write must succeed and the relay must never close or reset it. Messages are
counted by sequence number at real rsyslogd collectors.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from relay.protocol.framing import encode_octet_counted
from tests.interop.peers import (
    LOOPBACK,
    RelayProcess,
    RsyslogCollector,
    free_port,
    relay_counters,
)
from tests.waiting import wait_until

_SEQ = re.compile(rb"seq=(\d+)")
COUNT = 100_000
CHUNK = 1_000  # messages per write
RATE = 20_000  # messages per second the test sends
HUP_AT = 30_000  # the reload is asked for once this many were sent
AFTER_RELOAD = 20_000  # at least this many are sent after the reload completed
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def message(seq: int) -> bytes:
    return b"<13>1 2026-01-01T00:00:00Z host app - - - seq=%d reload test" % seq


def file_seqs(path: Path) -> collections.Counter[int]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return collections.Counter()
    return collections.Counter(int(n) for n in _SEQ.findall(data))


def write_config(path: Path, state: Path, port: int, outputs: str, extra: str = "") -> None:
    path.write_text(
        f'[relay]\nstate_dir = "{state}"\n{extra}\n'
        f'[input.in]\nurl = "tcp://{LOOPBACK}:{port}"\n\n{outputs}'
    )


def output(name: str, url: str, extra: str = "") -> str:
    return f'[output.{name}]\nurl = "{url}"\n{extra}\n'


def test_an_invalid_config_changes_nothing(tmp_path: Path) -> None:
    port = free_port()
    sink = tmp_path / "sink.log"
    conf = tmp_path / "relay.toml"
    state = tmp_path / "state"
    write_config(conf, state, port, output("file", f"file://{sink}", "flush_interval = 0"))
    relay = RelayProcess(["-c", str(conf)], tmp_path / "relay")
    with relay.start():
        relay.wait_for_tcp(port)
        sender = socket.create_connection((LOOPBACK, port), timeout=10)
        sender.sendall(encode_octet_counted([message(i) for i in range(100)]))
        wait_until(lambda: len(file_seqs(sink)) == 100, 10)
        # Two mistakes, and an output that would be new: none of it applies.
        write_config(
            conf,
            state,
            port,
            output("file", f"file://{sink}", "flush_interval = 0")
            + output("more", "tcp://127.0.0.1:1", "queue_max_messages = -5\ncolour = 1"),
        )
        check = subprocess.run(
            [sys.executable, "-m", "relay", "check", "-c", str(conf)],
            capture_output=True,
            text=True,
            check=False,
            env=ENV,
        )
        assert check.returncode == 1
        expected = check.stderr.splitlines()
        assert len(expected) == 2, expected
        os.kill(relay.pid, signal.SIGHUP)
        wait_until(lambda: "reload refused" in relay.log(), 10, message=relay.log_tail)
        logged = [line for line in relay.log().splitlines() if " relay: error: " in line]
        assert [line.split(" ERROR ", 1)[1] for line in logged] == expected
        assert "has 2 mistakes (above); still running on the config as it was" in relay.log()
        # Still running on the old config: it keeps delivering, on the same connection.
        sender.sendall(encode_octet_counted([message(i) for i in range(100, 200)]))
        wait_until(lambda: len(file_seqs(sink)) == 200, 10)
        sender.close()
        assert relay.terminate() == 0
    assert file_seqs(sink) == collections.Counter(range(200))
    assert not (state / "spool" / "more").exists()
    assert "relay: output more:" not in relay.log()


def send_stream(sender: socket.socket, relay: RelayProcess, on_hup: Callable[[], None]) -> int:
    """Send COUNT numbered messages at RATE over ``sender``; call ``on_hup``
    once HUP_AT were sent. Returns the first number sent after the relay
    logged that the reload was done (holding back, if need be, so that at
    least AFTER_RELOAD are sent after it). Every write must succeed."""
    started = time.monotonic()
    after: int | None = None
    seq = 0
    while seq < COUNT:
        if seq == HUP_AT:
            on_hup()
        if after is None and "relay: reloaded " in relay.log():
            after = seq
        if after is None and seq >= COUNT - AFTER_RELOAD:
            wait_until(lambda: "relay: reloaded " in relay.log(), 30, message=relay.log_tail)
            after = seq
        sender.sendall(encode_octet_counted([message(n) for n in range(seq, seq + CHUNK)]))
        seq += CHUNK
        ahead = started + seq / RATE - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # the sender's pace, not synchronisation
    assert after is not None
    return after


def still_open(sock: socket.socket) -> bool:
    """The relay has neither closed nor reset the connection (it sends nothing)."""
    sock.setblocking(False)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:  # reset
        return False
    return bool(data)


def test_reload_adds_changes_and_removes_outputs_during_a_stream(tmp_path: Path) -> None:
    keep = RsyslogCollector(tmp_path, name="keep")
    before = RsyslogCollector(tmp_path, name="before")
    after_ = RsyslogCollector(tmp_path, name="after")
    added = RsyslogCollector(tmp_path, name="added")
    down = socket.socket()
    down.bind((LOOPBACK, 0))  # bound, never listening: connections are refused
    port = free_port()
    conf = tmp_path / "relay.toml"
    state = tmp_path / "state"
    gone_file = tmp_path / "gone.log"

    def outputs(change_to: RsyslogCollector) -> str:
        return output("keep", f"tcp://{LOOPBACK}:{keep.tcp_port}") + output(
            "change", f"tcp://{LOOPBACK}:{change_to.tcp_port}"
        )

    first = outputs(before) + output("gone", f"tcp://{LOOPBACK}:{down.getsockname()[1]}")
    second = outputs(after_) + output("added", f"tcp://{LOOPBACK}:{added.tcp_port}")
    write_config(conf, state, port, first)
    relay = RelayProcess(["-c", str(conf)], tmp_path / "relay")
    with keep, before, after_, added, relay.start():
        for collector in (keep, before, after_, added):
            collector.wait_ready()
        relay.wait_for_tcp(port)
        with socket.create_connection((LOOPBACK, port), timeout=30) as sender:

            def hup() -> None:
                write_config(conf, state, port, second)
                os.kill(relay.pid, signal.SIGHUP)

            reloaded_at = send_stream(sender, relay, hup)
            everything = set(range(COUNT))

            def arrived() -> bool:
                return set(keep.seqs()) == everything and everything <= set(
                    before.seqs() + after_.seqs()
                )

            wait_until(arrived, 60, interval=0.5, message=relay.log_tail)
            assert still_open(sender), "the relay closed the sender's connection"
            wait_until(lambda: set(range(reloaded_at, COUNT)) <= set(added.seqs()), 30)
        log = relay.log()
        # The unchanged output: every message once.
        assert keep.seqs() == collections.Counter(range(COUNT))
        # The changed one: every message, at one collector or the other, and
        # once unless the old one could not confirm its last writes in time
        # (at-least-once then, and the log says so).
        changed = before.seqs() + after_.seqs()
        duplicates = sum(n - 1 for n in changed.values())
        unconfirmed = re.search(r"output change: (\d+) messages written before the reload", log)
        assert duplicates <= (int(unconfirmed.group(1)) if unconfirmed else 0), duplicates
        assert max(before.seqs()) < reloaded_at
        assert set(range(reloaded_at, COUNT)) <= set(after_.seqs())
        # The new one: at least everything sent after the reload was done.
        assert set(added.seqs()) <= everything
        # The removed output's spool is on disk, and the log says where.
        spool = state / "spool" / "gone"
        found = re.search(
            r"output gone is removed; (\d+) messages it had not delivered are kept "
            r"in (\S+),",
            log,
        )
        assert found, log
        kept, where = int(found.group(1)), found.group(2)
        assert where == str(spool)
        assert kept > 0 and any(spool.glob("*.seg"))
        # Configured again (here as a file), it delivers them: each once.
        write_config(
            conf, state, port, second + output("gone", f"file://{gone_file}", "flush_interval = 0")
        )
        told = subprocess.run(
            [sys.executable, "-m", "relay", "reload", "-c", str(conf)],
            capture_output=True,
            text=True,
            check=False,
            env=ENV,
        )
        assert told.returncode == 0, told.stderr
        assert f"told the relay (pid {relay.pid}) to reload" in told.stderr
        wait_until(lambda: sum(file_seqs(gone_file).values()) >= kept, 30, message=relay.log_tail)
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    gone = file_seqs(gone_file)
    assert gone == collections.Counter(range(kept))  # what it took before the reload, once
    assert kept <= reloaded_at
    assert relay_counters(relay.log(), "input", "in")["received"] == COUNT
    # The changed output's counters go on across the reload.
    counters = relay_counters(relay.log(), "output", "change")
    assert counters["queued"] == COUNT and counters["delivered"] >= COUNT
    down.close()
