"""Debian 12's stock /etc/rsyslog.conf, run by rsyslogd and converted for relay (issue 16).

"Done when" 1 of the local aggregator: the configuration the rsyslog package
ships (this machine's /etc/rsyslog.conf), with its paths moved into the
test's directory, runs in a real rsyslogd; the same text, converted by
``relay import-rsyslog``, runs in relay. ``logger`` sends every facility and
severity it can name over the imuxsock socket of each, with and without
``-i``; the facilities logger cannot name (kern, which it sends as user, and
12-15) go as raw datagrams in logger's own format. Both sets of log files
then have the same names, modes and group, and, with the timestamp field
replaced, the same lines in the same order.

What the copy run by rsyslogd leaves out, and why: ``imklog`` (there is no
kernel log to read in a test; relay lists it as not converted) and
``*.emerg :omusrmsg:*`` (it writes to the host's terminals; relay lists it
too). The stream variant is not compared here: imuxsock takes datagrams
only (relay's ``unix+stream://`` against rsyslog's lines is in
test_local.py).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.interop.peers import REPO_ROOT, RelayProcess, Rsyslog, require_program
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

STOCK = Path("/etc/rsyslog.conf")
FILES = ("syslog", "auth.log", "cron.log", "kern.log", "mail.log", "user.log")
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
# What logger -p can name (kern is sent as user: as glibc's syslog(3), logger
# puts a program's kern messages under user).
NAMED = (
    *("user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron"),
    *("authpriv", "ftp", *(f"local{n}" for n in range(8))),
)
RAW_FACILITIES = (0, 12, 13, 14, 15)  # kern, ntp, audit, alert, clock
UNCONVERTED = ("kernel log input not supported (imklog)", "(omusrmsg) have no relay equivalent")
# RSYSLOG_FileFormat: an RFC 3339 timestamp, then the host and the rest.
TIMESTAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d ")
LOGGER_PID = re.compile(rb" app\[(?!4242\])\d+\]:")


def stock_text() -> str:
    require_program("rsyslogd", "rsyslog")
    if not STOCK.exists():
        pytest.fail(f"{STOCK} is missing: apt-get install --reinstall rsyslog")
    return STOCK.read_text()


def moved(text: str, root: Path, *, for_rsyslog: bool) -> str:
    """``text`` with its paths in ``root``, and its socket ``root/dev-log``."""
    replacements = {
        'module(load="imuxsock")': f'module(load="imuxsock" SysSock.Name="{root}/dev-log")',
        "$WorkDirectory /var/spool/rsyslog": f"$WorkDirectory {root}/work",
        "$IncludeConfig /etc/rsyslog.d/*.conf": f"$IncludeConfig {root}/rsyslog.d/*.conf",
        "/var/log/": f"{root}/log/",
    }
    if for_rsyslog:
        replacements['module(load="imklog")'] = "# imklog: no kernel log in a test"
        replacements["*.emerg"] = "# *.emerg"
    for old, new in replacements.items():
        assert old in text, f"{STOCK} has no {old!r}: not the file Debian 12 ships?"
        text = text.replace(old, new)
    (root / "work").mkdir(parents=True, exist_ok=True)
    (root / "log").mkdir(exist_ok=True)
    (root / "rsyslog.d").mkdir(exist_ok=True)
    return text


class StockRsyslog(Rsyslog):
    """rsyslogd with a whole configuration of its own (no global() line first)."""

    def __init__(self, root: Path, config: str) -> None:
        super().__init__(root, config)
        self.socket = root / "dev-log"

    def config_text(self) -> str:
        return self.config

    def wait_ready(self) -> None:
        wait_until(
            lambda: self.socket.exists() or self.process is None or self.process.poll() is not None,
            10,
            message=lambda: f"rsyslogd made no {self.socket}; log:\n{self.log_tail()}",
        )


def send_all(logger: str, sock: Path) -> int:
    """Every combination once, with and without -i; returns how many were sent."""
    sent = 0
    for with_pid in (False, True):
        for facility in NAMED:
            for severity in SEVERITIES:
                text = f"{facility}.{severity} seq={sent}"
                pid = ["-i"] if with_pid else []
                command = [logger, "-d", "-u", str(sock), "-p", f"{facility}.{severity}"]
                subprocess.run([*command, "-t", "app", *pid, text], check=True, timeout=10)
                sent += 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
            for number in RAW_FACILITIES:
                for level, name in enumerate(SEVERITIES):
                    stamp = time.strftime("%b %e %H:%M:%S").encode()
                    tag = b"app[4242]" if with_pid else b"app"
                    body = b"%d.%s seq=%d" % (number, name.encode(), sent)
                    datagram = b"<%d>%s %s: %s" % (number * 8 + level, stamp, tag, body)
                    raw.sendto(datagram, str(sock))
                    sent += 1
    return sent


def lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]


def seqs_written(log: Path) -> set[int]:
    """The sequence numbers in the files: every message lands in one of them."""
    found: set[int] = set()
    for name in FILES:
        found.update(int(m) for m in re.findall(rb"seq=(\d+)", b"\n".join(lines(log / name))))
    return found


def masked(path: Path) -> list[bytes]:
    """The lines of ``path`` with the timestamp replaced, and the pid of each
    ``logger -i`` (one process a message, different in the two runs)."""
    out = []
    for line in lines(path):
        assert TIMESTAMP.match(line), (path, line)
        out.append(LOGGER_PID.sub(b" app[PID]:", TIMESTAMP.sub(b"TIMESTAMP ", line)))
    return out


def test_debian_stock_config_converted_writes_the_same_files(tmp_path: Path) -> None:
    logger = require_program("logger", "bsdutils")
    text = stock_text()
    rsyslog_root, relay_root = tmp_path / "rsyslog", tmp_path / "relay"

    source = relay_root / "rsyslog.conf"
    relay_root.mkdir()
    source.write_text(moved(text, relay_root, for_rsyslog=False))
    converted = subprocess.run(
        [sys.executable, "-m", "relay", "import-rsyslog", str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )
    assert converted.returncode == 1, converted.stderr
    problems = converted.stderr.splitlines()
    assert len(problems) == len(UNCONVERTED), problems
    for problem, why in zip(problems, UNCONVERTED, strict=True):
        assert problem.startswith(f"{source}:") and why in problem, problems
    config = relay_root / "relay.toml"
    config.write_text(converted.stdout)

    rsyslog = StockRsyslog(rsyslog_root, moved(text, rsyslog_root, for_rsyslog=True))
    with rsyslog, RelayProcess(["-c", str(config)], relay_root / "run") as relay:
        relay_socket = relay_root / "dev-log"
        wait_until(
            lambda: relay_socket.exists() or not relay.running(),
            15,
            message=relay.log_tail,
        )
        assert relay.running(), relay.log()
        sent = send_all(logger, rsyslog.socket)
        assert send_all(logger, relay_socket) == sent
        every = set(range(sent))
        wait_until(
            lambda: seqs_written(rsyslog_root / "log") == every, 30, message=rsyslog.log_tail
        )
        wait_until(lambda: seqs_written(relay_root / "log") == every, 30, message=relay.log_tail)
        assert relay.terminate() == 0, relay.log()

    rsyslog_log, relay_log = rsyslog_root / "log", relay_root / "log"
    assert sorted(p.name for p in relay_log.iterdir()) == sorted(
        p.name for p in rsyslog_log.iterdir()
    )
    for name in sorted(p.name for p in rsyslog_log.iterdir()):
        theirs, ours = (rsyslog_log / name).stat(), (relay_log / name).stat()
        assert (ours.st_mode, ours.st_gid) == (theirs.st_mode, theirs.st_gid), name
        assert masked(relay_log / name) == masked(rsyslog_log / name), name
