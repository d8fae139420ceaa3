"""The relay under a service manager: systemd's notifications over a real
NOTIFY_SOCKET, and dropping root with --user after binding port 514.

systemd itself is not run: the test plays its part, binding the unix datagram
socket it names in NOTIFY_SOCKET (as systemd does for Type=notify) and reading
what arrives there.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.peers import (
    LOOPBACK,
    RelayProcess,
    RsyslogCollector,
    free_port,
    relay_send,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

NOBODY = pwd.getpwnam("nobody")
RELAY_SEND = [sys.executable, "-m", "relay", "send"]


class NotifySocket:
    """The test's stand-in for systemd's notify socket: every datagram, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.last_status = ""

    def next(self, timeout: float, relay: RelayProcess | None = None) -> dict[str, str]:
        """The next notification as KEY -> value; fails after ``timeout`` s, or
        at once when ``relay`` exits first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(min(left, 0.1))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if relay is not None and not relay.running():
                    break
                continue
            return dict(line.split("=", 1) for line in data.decode().splitlines())
        tail = relay.log_tail() if relay else ""
        raise AssertionError(f"no notification within {timeout}s; relay log:\n{tail}")

    def waiting(self) -> list[dict[str, str]]:
        """Every notification already there, without waiting."""
        found = []
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                found.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        except BlockingIOError:
            return found

    def status(self) -> str:
        """The latest STATUS= sent (the relay sends one when it changed, every few s)."""
        for notification in self.waiting():
            self.last_status = notification.get("STATUS", self.last_status)
        return self.last_status

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def test_ready_only_once_every_listener_accepts_then_stopping_at_sigterm(
    tmp_path: Path, notify: NotifySocket
) -> None:
    tcp, udp = free_port("tcp"), free_port("udp")
    unix = tmp_path / "log.sock"
    out = tmp_path / "out.log"
    relay = RelayProcess(
        [
            f"--input=tcp://{LOOPBACK}:{tcp}",
            f"--input=udp://{LOOPBACK}:{udp}",
            f"--input=unix://{unix}",
            f"--output=file://{out}",
        ],
        tmp_path / "relay",
        env={"NOTIFY_SOCKET": str(notify.path)},
    )
    with relay.start():
        ready = notify.next(20, relay)
        # At once, no retry: READY=1 promises the listeners accept now.
        with socket.create_connection((LOOPBACK, tcp), timeout=5) as conn:
            conn.sendall(b"<13>1 - h app - - - seq=0 over tcp\n")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as log:
            log.sendto(b"<13>1 - h app - - - seq=1 over unix", str(unix))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
            dgram.sendto(b"<13>1 - h app - - - seq=2 over udp", (LOOPBACK, udp))
        assert ready == {
            "READY": "1",
            "STATUS": "3 inputs listening; 1 of 1 outputs up; 0 messages queued",
        }
        wait_until(lambda: out.exists() and out.read_bytes().count(b"seq=") == 3, 10)
        assert relay.terminate() == 0
    (stopping,) = notify.waiting()  # no STATUS= change between: nothing else sent
    assert stopping["STOPPING"] == "1"
    assert stopping["STATUS"].startswith("SIGTERM received; stopping;")


def test_no_ready_when_the_start_fails(tmp_path: Path, notify: NotifySocket) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        relay = RelayProcess(
            [f"--input=tcp://{LOOPBACK}:{port}", f"--output=file://{tmp_path / 'out'}"],
            tmp_path / "relay",
            env={"NOTIFY_SOCKET": str(notify.path)},
        )
        with relay.start():
            assert relay.wait_for_exit() == 1
    assert notify.waiting() == []
    assert "Traceback" not in relay.log()


@pytest.mark.serial  # each ping within 0.6 s
def test_watchdog_pings_while_serving(tmp_path: Path, notify: NotifySocket) -> None:
    relay = RelayProcess(
        [f"--input=tcp://{LOOPBACK}:{free_port()}", f"--output=file://{tmp_path / 'out'}"],
        tmp_path / "relay",
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "300000"},  # WatchdogSec=0.3
    )
    with relay.start():
        assert notify.next(20, relay)["READY"] == "1"
        started = time.monotonic()
        for _ in range(5):  # each within WatchdogSec, or systemd would restart it
            assert notify.next(0.3 * 2, relay) == {"WATCHDOG": "1"}
        assert time.monotonic() - started >= 4 * 0.15  # half WatchdogSec apart, not a flood
        assert relay.terminate() == 0


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory under /tmp that nobody may enter (pytest's tmp_path is 0700)."""
    with tempfile.TemporaryDirectory(prefix="relay-user-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def ids(pid: int) -> dict[str, list[str]]:
    """The Uid, Gid and Groups lines of /proc/PID/status."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {key: fields[key].split() for key in ("Uid", "Gid", "Groups")}


def require_free_port_514() -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, 514))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                pytest.fail(
                    f"TCP port 514 on {LOOPBACK} is in use by another program; this test "
                    "binds it (a privileged port): stop that program and run it again",
                    pytrace=False,
                )
            raise


def send_unix(path: Path, count: int, start: int) -> None:
    result = subprocess.run(
        [*RELAY_SEND, f"unix://{path}", "-n", str(count), "--start", str(start)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="binding port 514 and changing user need root")
def test_user_nobody_binds_port_514_and_a_unix_socket_then_serves_as_nobody(
    tmp_path: Path, open_dir: Path, notify: NotifySocket
) -> None:
    """Root binds tcp/514 and a unix socket, then the relay runs as nobody: the
    spool it saves at the stop and replays at the next start, and delivery to
    a real rsyslog, work as nobody; systemd's notifications still arrive
    (the notify socket is one only root can reach)."""
    require_free_port_514()
    state, unix = open_dir / "state", open_dir / "log.sock"
    collector = RsyslogCollector(tmp_path)  # started later: first the spool
    config = tmp_path / "relay.toml"
    config.write_text(f"""\
[relay]
state_dir = "{state}"
stop_timeout = 5
[input.tcp]
url = "tcp://{LOOPBACK}:514"
[input.log]
url = "unix://{unix}"
[output.up]
url = "tcp://{LOOPBACK}:{collector.tcp_port}"
""")
    nobody = [str(NOBODY.pw_uid)] * 4, [str(NOBODY.pw_gid)] * 4

    def start(name: str) -> RelayProcess:
        relay = RelayProcess(
            ["-c", str(config), "--user", "nobody"],
            tmp_path / name,
            env={"NOTIFY_SOCKET": str(notify.path)},
        ).start()
        try:
            assert notify.next(20, relay)["READY"] == "1"
            assert ids(relay.pid) == {"Uid": nobody[0], "Gid": nobody[1], "Groups": []}
            assert f"running as user nobody (uid {NOBODY.pw_uid})" in relay.log()
        except BaseException:
            relay.kill()  # port 514 free again for the next run
            raise
        return relay

    with start("first") as relay:
        relay_send(514, 100)  # seq 0-99
        send_unix(unix, 50, start=100)  # seq 100-149
        wait_until(lambda: "150 messages queued" in notify.status(), 20, message=relay.log_tail)
        assert relay.terminate() == 0, relay.log()
    log = relay.log()
    assert "output up: 150 messages not delivered yet are kept in" in log, log
    segments = list((state / "spool").rglob("*.seg"))
    assert segments, log
    for path in [state, *state.rglob("*")]:
        assert path.lstat().st_uid == NOBODY.pw_uid, path
    notify.waiting()

    with collector, start("second") as relay:
        relay_send(514, 50, start=150)  # seq 150-199
        collector.wait_for_count(200, timeout=30)
        seqs = collector.seqs()
        assert seqs == {n: 1 for n in range(200)}, relay.log_tail()
        check_control_socket(config, state)
        assert relay.terminate() == 0, relay.log()
    assert "Traceback" not in relay.log()


def check_control_socket(config: Path, state: Path) -> None:
    """`relay stats` reads the control socket of a relay running as nobody,
    which owns it (given to it with the state directory)."""
    assert (state / "control.sock").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    result = subprocess.run(
        [sys.executable, "-m", "relay", "stats", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
