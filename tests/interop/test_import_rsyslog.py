"""`relay import-rsyslog` end to end: issue 16's seed configuration converted,
then run by relay over real sockets (Done-when 2).

The seed, as an operator has it on every host:

    $ModLoad imuxsock
    $ModLoad imklog
    $ActionQueueType LinkedList
    $ActionQueueFileName srvrfwd
    $ActionResumeRetryCount -1
    $ActionQueueSaveOnShutdown on
    *.* @@(o)10.0.5.50:6514

Here its target is a loopback port, and two lines put its paths in the
test's directory ($WorkDirectory, and $SystemLogSocketName for /dev/log).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.peers import REPO_ROOT, RelayProcess, RsyslogCollector, relay_counters
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

COUNT = 50_000


def seed(state: Path, socket: Path, port: int) -> str:
    return f"""\
$WorkDirectory {state}
$SystemLogSocketName {socket}
$ModLoad imuxsock
$ModLoad imklog
$ActionQueueType LinkedList
$ActionQueueFileName srvrfwd
$ActionResumeRetryCount -1
$ActionQueueSaveOnShutdown on
*.* @@(o)127.0.0.1:{port}
"""


def relay_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )


def unix_queue_empty(path: Path) -> bool:
    """No datagram waits in the receive queue of the unix socket bound at ``path``
    (ss's Recv-Q: for a datagram socket, the length of the next one)."""
    out = subprocess.run(
        ["ss", "-x", "-H", "-a", "src", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    return len(out) >= 3 and out[2] == "0"


def test_seed_configuration_queues_on_disk_across_a_stop(tmp_path: Path) -> None:
    collector = RsyslogCollector(tmp_path)  # ports chosen now, started later
    socket = tmp_path / "devlog"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(seed(tmp_path / "state", socket, collector.tcp_port))

    converted = relay_command("import-rsyslog", str(conf))
    assert converted.returncode == 1, converted.stderr
    assert converted.stderr == f"{conf}:4: kernel log input not supported (imklog)\n"
    toml = tmp_path / "relay.toml"
    toml.write_text(converted.stdout)
    checked = relay_command("check", "-c", str(toml))
    assert checked.returncode == 0, checked.stderr
    assert f"unix://{socket}" in checked.stdout
    assert f"tcp://127.0.0.1:{collector.tcp_port}" in checked.stdout

    # The collector is down: everything goes to the spool.
    with RelayProcess(["-c", str(toml)], tmp_path / "first") as relay:
        wait_until(socket.exists, 10, message="relay never bound its unix socket")
        sent = relay_command("send", f"unix://{socket}", "--count", str(COUNT))
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: unix_queue_empty(socket), 30, message="relay left datagrams unread")
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
        received = relay_counters(relay.log(), "input", "devlog")["received"]
        assert received == COUNT, relay.log_tail()

    # Restart, then the collector comes up: every message arrives, once.
    with RelayProcess(["-c", str(toml)], tmp_path / "second") as relay, collector:
        wait_until(
            lambda: len(collector.seqs()) >= COUNT,
            120,
            message=lambda: f"collector has {len(collector.seqs())} of {COUNT}",
        )
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    seqs = collector.seqs()
    assert set(seqs) == set(range(COUNT))
    assert max(seqs.values()) == 1, [n for n, c in seqs.items() if c > 1][:10]
