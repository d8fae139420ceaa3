"""HAProxy (the Debian package) in front of relays, as the test's own process.

TCP mode, round robin over loopback ports, health checks every 200 ms (a
relay that stops is taken out within a check), ``option redispatch`` so a
connection to a node that refuses goes to the next. Its own config, pid
file and free port; ``-db`` keeps it in the foreground, so the test owns
the process and ends it by pid.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

from tests.interop.peers import (
    LOOPBACK,
    StartStop,
    free_port,
    log_tail,
    require_program,
    wait_for_tcp,
)


class Haproxy(StartStop):
    def __init__(self, directory: Path, servers: Sequence[int], *, extra: str = "") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.servers = list(servers)
        self.extra = extra  # more lines for each server (e.g. send-proxy-v2)
        self.config_path = self.directory / "haproxy.cfg"
        self.pid_path = self.directory / "haproxy.pid"
        self.log_path = self.directory / "haproxy.log"
        self.config_path.write_text(self.config_text())
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def config_text(self) -> str:
        servers = "\n".join(
            f"    server relay{i} {LOOPBACK}:{port} check {self.extra}"
            for i, port in enumerate(self.servers)
        )
        return f"""\
global
    pidfile {self.pid_path}
    maxconn 1000

defaults
    mode tcp
    timeout connect 1s
    timeout client 5m
    timeout server 5m
    retries 3
    option redispatch

frontend syslog
    bind {LOOPBACK}:{self.port}
    default_backend relays

backend relays
    balance roundrobin
    default-server inter 200ms fall 1 rise 2
{servers}
"""

    def start(self) -> Self:
        haproxy = require_program("haproxy", "haproxy")
        check = subprocess.run(
            [haproxy, "-c", "-f", str(self.config_path)], capture_output=True, check=False
        )
        assert check.returncode == 0, check.stderr.decode(errors="replace")
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [haproxy, "-db", "-f", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for_tcp(LOOPBACK, self.port, 10.0, process=self.process, log_path=self.log_path)
        return self

    def log_tail(self) -> str:
        return log_tail(self.log_path)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
