"""Real peers for the interop tests: rsyslogd, and the relay itself, as subprocesses.

Every test starts its own peers on loopback with its own files under
``tmp_path`` and never touches the system's rsyslog (its config, /dev/log or
pid file). A peer that is missing from the machine fails the test loudly,
naming the Debian package to install; it is never skipped. The configs
follow docs/TESTING.md (the rsyslog peer configs), except that the collector records %rawmsg%
(the exact bytes received) rather than %msg%, and imudp gets a 16 MiB
receive buffer (see RsyslogCollector).

Waiting is always "poll a condition with a short interval until a deadline",
never a bare sleep: ``wait_until`` / ``await_until`` for anything,
``wait_for_tcp`` for a listening port.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

import pytest
import trio

from relay.protocol.relp import Acked, Opened, RelpClient
from tests.waiting import wait_until

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

# rsyslogd lives in /usr/sbin, which is not on every user's PATH.
_EXTRA_PATH = ("/usr/sbin", "/sbin")

# rsyslog modules that come in their own Debian package, for a clear failure.
_MODULE_PACKAGES = {
    "imrelp": "rsyslog-relp",
    "omrelp": "rsyslog-relp",
    "ossl": "rsyslog-openssl",
    "lmnsd_ossl": "rsyslog-openssl",
}

_SEQ = re.compile(rb"seq=(\d+)")

# How long (ms) a full rsyslog queue keeps a message waiting for room. Past
# that rsyslog DISCARDS it, silently: only impstats counts it, as
# "discarded.full". Its default, 2000, loses one message each time an action
# queue stays full for 2 s, which is all it takes when the receiver under
# test answers nothing for 2 s (a loaded machine): the relay never sees the
# message and the test blames it. A peer in a test waits instead (10 min).
ENQUEUE_TIMEOUT_MS = 600_000
# The same for the main queue, which inputs feed (imtcp, imrelp).
MAIN_QUEUE = f'main_queue(queue.timeoutEnqueue="{ENQUEUE_TIMEOUT_MS}")'


# -- programs ---------------------------------------------------------------


def require_program(name: str, package: str) -> str:
    """Return the path of ``name``, or fail the test naming the Debian package.

    A missing peer is a broken test machine, not a reason to skip: a skipped
    interop test would let the suite pass without ever meeting a real peer.
    """
    path = shutil.which(name)
    if path is None:
        extra = os.pathsep.join(_EXTRA_PATH)
        path = shutil.which(name, path=f"{os.environ.get('PATH', '')}{os.pathsep}{extra}")
    if path is None:
        pytest.fail(
            f"{name!r} is not installed: this test needs a real peer "
            f"(apt-get install {package}; scripts/test installs it)",
            pytrace=False,
        )
    return path


# -- ports and waiting ------------------------------------------------------


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class StartStop:
    """A peer the test starts on entering ``with`` and stops on leaving it;
    the subclass gives start() (returning itself) and stop()."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port(kind: str = "tcp", host: str = LOOPBACK) -> int:
    """Ask the kernel for a free ``tcp`` or ``udp`` port on ``host``.

    The port is closed again before this returns, so another process may take
    it in between; on loopback in a test run that is rare enough.
    """
    if kind not in ("tcp", "udp"):
        raise ValueError(f"kind must be 'tcp' or 'udp', not {kind!r}")
    sock_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(_family(host), sock_type) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"({path} is empty)"


def _exited(process: subprocess.Popen[bytes] | None) -> int | None:
    return None if process is None else process.poll()


def wait_for_tcp(
    host: str,
    port: int,
    timeout: float = 10.0,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll-connect to ``host:port`` until it accepts a connection.

    If ``process`` (the peer that should be listening) exits first, fail at
    once with its exit code; either way the failure shows ``log_path``'s tail.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        returncode = _exited(process)
        if returncode is not None:
            raise AssertionError(
                f"peer exited with status {returncode} before {host}:{port} accepted;"
                f" log tail:\n{log_tail(log_path)}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{host}:{port} did not accept a TCP connection within {timeout}s"
                f" (last error: {last_error}); log tail:\n{log_tail(log_path)}"
            )
        time.sleep(0.02)


def udp_port_bound(port: int) -> bool:
    """Whether some socket is bound to UDP ``port`` (IPv4 or IPv6).

    Read from /proc/net/udp{,6} rather than probed with bind(): a probe that
    binds the port could make the peer's own bind fail.
    """
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        if any(row.split()[1].endswith(suffix) for row in rows if row.strip()):
            return True
    return False


def _udp_socket_row(port: int) -> list[str] | None:
    """The row of /proc/net/udp{,6} of the socket bound to UDP ``port``, split."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if fields and fields[1].endswith(suffix):
                return fields
    return None


def udp_receive_queue(port: int) -> int | None:
    """Bytes waiting in the receive queue of the socket bound to UDP ``port``
    (the ``rx_queue`` column of /proc/net/udp{,6}), or None if none is bound:
    0 once the process that owns it has read everything sent to it."""
    fields = _udp_socket_row(port)
    return None if fields is None else int(fields[4].split(":")[1], 16)


def udp_drops(port: int) -> int | None:
    """Datagrams the kernel dropped for the socket bound to UDP ``port`` (its
    receive buffer was full: the ``drops`` column of /proc/net/udp{,6}), or
    None if none is bound. Loss that relay cannot see, so cannot count."""
    fields = _udp_socket_row(port)
    return None if fields is None else int(fields[-1])


def process_memory_kib(pid: int, field: str = "VmHWM") -> int:
    """``field`` of /proc/PID/status in KiB: VmHWM (peak resident) or VmRSS (now)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1])


# -- subprocess handling shared by rsyslogd and the relay -------------------


def _stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> tuple[int, bool]:
    """Send ``sig`` to ``process`` by its pid and reap it.

    Returns (exit status, whether it exited within ``timeout``); a process
    that did not is killed with SIGKILL so nothing outlives the test.
    """
    if process.poll() is not None:
        return process.returncode, True
    process.send_signal(sig)
    try:
        return process.wait(timeout), True
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(), False


# -- rsyslogd ---------------------------------------------------------------


class Rsyslog:
    """One rsyslogd in the foreground, with its own config, pid file and log.

    ``config`` is everything after the mandatory first line,
    ``global(workDirectory="DIR" maxMessageSize="64k")``. The process runs as
    ``rsyslogd -n -f DIR/rsyslog.conf -i DIR/rsyslog.pid`` with stdout and
    stderr in DIR/rsyslog.out. Use as a context manager, or call ``start()``
    and ``stop()``.
    """

    def __init__(self, directory: Path, config: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.conf_path = self.directory / "rsyslog.conf"
        self.pid_path = self.directory / "rsyslog.pid"
        self.out_path = self.directory / "rsyslog.out"
        self.process: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def config_text(self) -> str:
        head = f'global(workDirectory="{self.directory}" maxMessageSize="64k")\n'
        return head + self.config

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("rsyslogd is not started")
        return self.process.pid

    def start(self) -> Self:
        """Validate the config, start rsyslogd and wait until it is ready."""
        if self.process is not None:
            raise RuntimeError("rsyslogd is already started")
        rsyslogd = require_program("rsyslogd", "rsyslog")
        self.conf_path.write_text(self.config_text())
        self._validate(rsyslogd)
        self._out = self.out_path.open("wb")
        self.process = subprocess.Popen(
            [rsyslogd, "-n", "-f", str(self.conf_path), "-i", str(self.pid_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        try:
            self.wait_ready()
            # rsyslogd writes its pid file after it opened its inputs: a
            # loaded host may see the ports before the file.
            wait_until(
                lambda: self._pid_written() or _exited(self.process) is not None,
                10.0,
                message=lambda: f"rsyslogd wrote no pid file; log:\n{self.log_tail()}",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _pid_written(self) -> bool:
        try:
            return self.pid_path.read_text().strip() != ""
        except FileNotFoundError:
            return False

    def _validate(self, rsyslogd: str) -> None:
        # rsyslogd keeps running with a broken config (it logs and drops the
        # bad statement), so check it first: one clear failure, not a timeout.
        result = subprocess.run(
            [rsyslogd, "-N1", "-f", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode == 0:
            return
        output = (result.stdout + result.stderr).decode(errors="replace")
        hints = [
            f"apt-get install {package} (for {module})"
            for module, package in _MODULE_PACKAGES.items()
            if f"'{module}'" in output or f"{module}.so" in output
        ]
        hint = f"\nmissing module? {'; '.join(sorted(set(hints)))}" if hints else ""
        raise AssertionError(
            f"rsyslogd rejected {self.conf_path}:\n{output}{hint}\n"
            f"--- config ---\n{self.config_text()}"
        )

    def wait_ready(self) -> None:
        """Block until the inputs accept; subclasses know their ports."""

    def wait_for_tcp(self, port: int, host: str = LOOPBACK, timeout: float = 10.0) -> None:
        wait_for_tcp(host, port, timeout, process=self.process, log_path=self.out_path)

    def wait_for_udp(self, port: int, timeout: float = 10.0) -> None:
        wait_until(
            lambda: udp_port_bound(port) or _exited(self.process) is not None,
            timeout,
            message=lambda: f"rsyslogd did not bind UDP port {port}; log:\n{self.log_tail()}",
        )
        if _exited(self.process) is not None:
            raise AssertionError(f"rsyslogd exited; log tail:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.out_path, lines)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by pid, wait up to ``timeout`` s, then SIGKILL; returns the status.

        Afterwards :meth:`start` may start it again (same config, same ports).
        """
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL by pid: it dies with whatever it held in memory; returns the status."""
        return self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: int, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            returncode, _ = _stop_process(self.process, sig, timeout)
        finally:
            self.process = None
            if self._out is not None:
                self._out.close()
                self._out = None
        return returncode

    def __enter__(self) -> Self:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RsyslogCollector(Rsyslog):
    """rsyslogd as the upstream: what relay forwards to.

    Listens on ``host`` with imtcp (``tcp_port``: octet-counted and LF frames
    both accepted), imudp (``udp_port``) and imrelp (``relp_port``), and writes
    each message's exact received bytes (``%rawmsg%``, control characters not
    escaped) plus LF to DIR/sink.log. Ports are chosen at construction, so a
    test can configure the relay before starting the collector.

    ``direct=True`` gives the sink ruleset a Direct queue: imrelp then answers
    a message only once omfile wrote it. With the default in-memory queue,
    rsyslog answers on enqueue, and SIGKILL loses what it had answered and not
    yet written: the collector's loss, which no sender can see or make good.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        host: str = LOOPBACK,
        name: str = "collector",
        direct: bool = False,
    ) -> None:
        directory = Path(tmp_path) / name
        self.host = host
        self.direct = direct
        self.tcp_port = free_port("tcp", host)
        self.udp_port = free_port("udp", host)
        self.relp_port = free_port("tcp", host)
        self.sink_path = directory / "sink.log"
        # What the sink held at the last look, taken in once: tests poll
        # seqs() every 20 ms, and parsing 200,000 lines again each time cost
        # the test process a core while the relay and rsyslogd worked.
        self._read_to = 0
        self._lines: list[bytes] = []
        self._seqs: collections.Counter[int] = collections.Counter()
        super().__init__(directory, self._config())

    def _config(self) -> str:
        return f"""\
# Keep the received bytes as they are: by default rsyslog rewrites control
# characters as #ooo. (8.2302 honours this and the legacy
# "$EscapeControlCharactersOnReceive off" alike.)
global(parser.escapeControlCharactersOnReceive="off")
{MAIN_QUEUE}
module(load="imtcp")
input(type="imtcp" address="{self.host}" port="{self.tcp_port}" ruleset="sink")
module(load="imudp")
# With the default 208 KiB receive buffer rsyslog dropped ~40% of 1,000
# datagrams from logger here; as root it forces this size (SO_RCVBUFFORCE).
input(type="imudp" address="{self.host}" port="{self.udp_port}" ruleset="sink"
      rcvbufSize="16m")
module(load="imrelp")
input(type="imrelp" address="{self.host}" port="{self.relp_port}" ruleset="sink")
{self.sink()}"""

    def sink(self) -> str:
        """The template and the ruleset "sink" writing to ``sink_path``."""
        queue = ' queue.type="Direct"' if self.direct else ""
        return f"""\
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="sink"{queue}) {{
  action(type="omfile" file="{self.sink_path}" template="raw")
}}
"""

    def wait_ready(self) -> None:
        self.wait_for_tcp(self.tcp_port, self.host)
        self.wait_for_tcp(self.relp_port, self.host)
        self.wait_for_udp(self.udp_port)

    def data(self) -> bytes:
        """The sink up to its last complete line (omfile may be mid-write)."""
        try:
            raw = self.sink_path.read_bytes()
        except FileNotFoundError:
            return b""
        return raw[: raw.rfind(b"\n") + 1]

    def lines(self) -> list[bytes]:
        """Every message received so far, as the bytes received, without the LF."""
        self._read_new()
        return list(self._lines)

    def seqs(self) -> collections.Counter[int]:
        """How often each ``seq=<n>`` has arrived so far."""
        self._read_new()
        return collections.Counter(self._seqs)

    def _read_new(self) -> None:
        """Take in the complete lines the sink gained since the last look
        (omfile only appends; a sink that shrank is read again from the start)."""
        try:
            with self.sink_path.open("rb") as sink:
                if os.fstat(sink.fileno()).st_size < self._read_to:
                    self._read_to, self._lines, self._seqs = 0, [], collections.Counter()
                sink.seek(self._read_to)
                new = sink.read()
        except FileNotFoundError:
            return
        new = new[: new.rfind(b"\n") + 1]
        self._read_to += len(new)
        self._lines += new.split(b"\n")[:-1]
        self._seqs.update(int(n) for n in _SEQ.findall(new))

    def wait_for_count(self, n: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until at least ``n`` messages have arrived; return them all."""

        def enough() -> list[bytes]:
            lines = self.lines()
            return lines if len(lines) >= n else []

        return wait_until(
            enough,
            timeout,
            message=lambda: f"collector has {len(self.lines())} of {n} messages",
        )


def omfwd_action(
    port: int,
    *,
    host: str = LOOPBACK,
    framing: str = "octet-counted",
    template: str = "raw",
    extra: str = "",
) -> str:
    """An omfwd-over-TCP action for ``RsyslogSender``.

    ``template="raw"`` (defined by RsyslogSender) forwards each message's
    bytes unchanged; "RSYSLOG_SyslogProtocol23Format" re-formats as RFC 5424.
    ``framing`` is "octet-counted" or "traditional" (LF). The action retries
    for ever, so nothing is lost while the target starts.
    """
    return (
        f'action(type="omfwd" target="{host}" port="{port}" protocol="tcp"'
        f' TCP_Framing="{framing}" template="{template}"'
        f' queue.type="LinkedList" queue.timeoutEnqueue="{ENQUEUE_TIMEOUT_MS}"'
        f' action.resumeRetryCount="-1" {extra})'
    )


def omrelp_action(
    port: int,
    *,
    host: str = LOOPBACK,
    window: int = 4096,
    template: str = "raw",
    extra: str = "",
) -> str:
    """An omrelp action for ``RsyslogSender``.

    omrelp's default window (128) moved ~2,900 msg/s over two RELP hops on
    loopback; 4096 about 85,000.
    """
    return (
        f'action(type="omrelp" target="{host}" port="{port}" windowSize="{window}"'
        f' template="{template}" queue.type="LinkedList" action.resumeRetryCount="-1"'
        f' queue.timeoutEnqueue="{ENQUEUE_TIMEOUT_MS}" {extra})'
    )


class RsyslogSender(Rsyslog):
    """rsyslogd as a client: what sends to relay.

    The test writes LF-terminated lines to imtcp on ``feed_port`` (see
    ``send_lines``); rsyslog passes each to ``action``, a config statement
    such as ``omfwd_action(port)`` or ``omrelp_action(port)``. ``preamble``
    goes before the input (TLS globals, module parameters); omrelp is loaded
    for you if the action uses it and the preamble does not. A template
    "raw" (``%rawmsg%``: the line as written, without its LF) is defined.
    """

    def __init__(
        self,
        tmp_path: Path,
        action: str,
        *,
        preamble: str = "",
        host: str = LOOPBACK,
        name: str = "sender",
    ) -> None:
        self.host = host
        self.feed_port = free_port("tcp", host)
        self.action = action
        self.preamble = preamble
        super().__init__(Path(tmp_path) / name, self._config())

    def _config(self) -> str:
        load_omrelp = '"omrelp"' in self.action and 'load="omrelp"' not in self.preamble
        return f"""\
global(parser.escapeControlCharactersOnReceive="off")
{self.preamble}
{'module(load="omrelp")' if load_omrelp else ""}
{MAIN_QUEUE}
module(load="imtcp")
input(type="imtcp" address="{self.host}" port="{self.feed_port}" ruleset="feed")
template(name="raw" type="string" string="%rawmsg%")
ruleset(name="feed") {{
  {self.action}
}}
"""

    def wait_ready(self) -> None:
        self.wait_for_tcp(self.feed_port, self.host)

    def send_lines(self, lines: Iterable[bytes], timeout: float = 10.0) -> None:
        """Write ``lines`` (without LF) to the feed port on one connection.

        rsyslog reads them as fast as its queues take them: ``timeout`` is for
        the whole write.
        """
        payload = b"".join(line + b"\n" for line in lines)
        with socket.create_connection((self.host, self.feed_port), timeout=timeout) as sock:
            sock.sendall(payload)


# -- the relay under test ---------------------------------------------------


class RelayProcess:
    """The relay under test: ``python -m relay run *args`` as a subprocess.

    Runs in ``directory`` (its working directory, so relative paths in the
    arguments land there) with stdout and stderr in relay.stdout and
    relay.stderr, ``PYTHONUNBUFFERED=1`` and this checkout first on
    PYTHONPATH. Use as a context manager; leaving it kills what still runs.
    """

    def __init__(
        self,
        args: Sequence[str],
        directory: Path,
        *,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.directory / "relay.stdout"
        self.stderr_path = self.directory / "relay.stderr"
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    @property
    def command(self) -> list[str]:
        # Never the system's state (tests run as root: /var/lib/relay): a config
        # file names its own state_dir; otherwise each relay gets one here.
        state = (
            []
            if "-c" in self.args or "--state-dir" in self.args
            else ["--state-dir", str(self.directory / "state")]
        )
        return [sys.executable, "-m", "relay", "run", *state, *self.args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(path))
        env.update(self.extra_env)
        return env

    def start(self) -> Self:
        if self.process is not None:
            raise RuntimeError("relay is already started")
        stdout = self.stdout_path.open("wb")
        stderr = self.stderr_path.open("wb")
        self._files = [stdout, stderr]
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=self.directory,
            env=self._env(),
        )
        return self

    @property
    def pid(self) -> int:
        return self._started().pid

    def _started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError("relay is not started")
        return self.process

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for_tcp(self, *ports: int, host: str = LOOPBACK, timeout: float = 10.0) -> None:
        """Wait until the relay accepts on every one of ``ports``."""
        for port in ports:
            wait_for_tcp(host, port, timeout, process=self._started(), log_path=self.stderr_path)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM by pid; assert it exits within ``timeout`` s; return its status."""
        returncode, in_time = _stop_process(self._started(), signal.SIGTERM, timeout)
        self._close_files()
        assert in_time, (
            f"relay did not exit within {timeout}s of SIGTERM (killed);"
            f" stderr tail:\n{self.log_tail()}"
        )
        return returncode

    def kill(self) -> int:
        """SIGKILL by pid (a crash, as far as the relay can tell); return its status."""
        returncode, _ = _stop_process(self._started(), signal.SIGKILL, 10.0)
        self._close_files()
        return returncode

    def wait_for_exit(self, timeout: float = 10.0) -> int:
        """Wait for the relay to exit on its own; return its status."""
        try:
            return self._started().wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"relay still running after {timeout}s; stderr tail:\n{self.log_tail()}"
            ) from None

    def log(self) -> str:
        """Everything the relay wrote to stderr so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.stderr_path, lines)

    def _close_files(self) -> None:
        for file in self._files:
            file.close()
        self._files = []

    def __enter__(self) -> Self:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            _stop_process(self.process, signal.SIGKILL, 10.0)
        self._close_files()


def relay_send_command(
    port: int,
    count: int,
    *,
    start: int = 0,
    size: int = 0,
    rate: float = 0,
    connections: int = 1,
    host: str = LOOPBACK,
) -> list[str]:
    """``relay send`` of ``count`` numbered messages over TCP to ``host:port``."""
    return [
        sys.executable,
        "-m",
        "relay",
        "send",
        f"tcp://{host}:{port}",
        "--count",
        str(count),
        "--start",
        str(start),
        "--size",
        str(size),
        "--rate",
        str(rate),
        "--connections",
        str(connections),
    ]


def relay_send(port: int, count: int, **options: Any) -> None:
    """Run ``relay send`` to the end (see relay_send_command); fail on an error."""
    result = subprocess.run(
        relay_send_command(port, count, **options),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr


class RelaySendProcess:
    """``relay send`` running in the background (see relay_send_command).

    Use as a context manager: leaving it kills the sender if it still runs,
    so a failing test never leaves one behind.
    """

    def __init__(self, port: int, count: int, **options: Any) -> None:
        self.process = subprocess.Popen(
            relay_send_command(port, count, **options),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self, timeout: float) -> None:
        """Wait for the sender to be done; fail unless it sent everything."""
        _, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, err

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running():
            self.process.kill()
        self.process.communicate()


async def send_until_killed(port: int, count: int, acked: set[int], start: int = 0) -> None:
    """Send numbered messages over RELP, recording each acknowledged number,
    until the relay goes away (or all are sent and acknowledged). The
    numbers are ``start`` to ``start + count - 1``; the sender is relay's own
    RELP client codec, so the test knows exactly what was acknowledged."""
    client = RelpClient(window=1024)
    seqs: dict[int, int] = {}
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(client.open())
        opened = False
        next_seq, end = start, start + count
        while next_seq < end or seqs:
            if opened and client.room() and next_seq < end:
                n = min(client.room(), 200, end - next_seq)
                data, txnrs = client.send(
                    [b"<13>1 - host app - - - seq=%d" % s for s in range(next_seq, next_seq + n)]
                )
                seqs.update(zip(txnrs, range(next_seq, next_seq + n), strict=True))
                next_seq += n
                await stream.send_all(data)
            data = await stream.receive_some(65536)
            if not data:
                return
            for event in client.receive_data(data):
                if isinstance(event, Opened):
                    opened = True
                elif isinstance(event, Acked):
                    acked.update(seqs.pop(txnr) for txnr in event.txnrs)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the relay was killed
    finally:
        await stream.aclose()


def outage(
    collector: Rsyslog,
    *,
    seqs: Callable[[], int],
    after: int,
    seconds: float = 5.0,
    hang: float = 0.0,
) -> None:
    """Once ``seqs()`` reaches ``after``, SIGKILL ``collector`` (it dies with
    whatever it held) and start it again ``seconds`` later, on the same ports.

    ``hang``: first SIGSTOP it for that long, so that it dies with messages
    in flight for certain (it reads and answers nothing meanwhile): without
    it, a collector that keeps up may die between two batches, and the
    resend after a loss goes untested."""
    wait_until(lambda: seqs() >= after, 60, message=f"the collector never got {after} messages")
    if hang:
        os.kill(collector.pid, signal.SIGSTOP)
        time.sleep(hang)  # the hang under test, not synchronisation
    collector.kill()
    time.sleep(seconds)  # the outage under test, not synchronisation
    collector.start()


def feed_through_outage(
    relay: RelayProcess,
    collector: RsyslogCollector,
    port: int,
    count: int,
    timeout: float = 90,
    hang: float = 0.0,
) -> float:
    """Send ``count`` numbered messages (``relay send``, 50,000 msg/s) to the
    relay's TCP input on ``port``; SIGKILL ``collector`` once it has 30% of them
    and start it again 5 s later; wait until every number has arrived, then
    stop the relay (it must exit 0). Returns the seconds all that took.
    ``timeout`` bounds the sending, and then the wait for the rest; ``hang``
    is :func:`outage`'s."""
    started = time.monotonic()
    with RelaySendProcess(port, count, size=200, rate=50_000) as feed:
        outage(collector, seqs=lambda: len(collector.seqs()), after=count * 3 // 10, hang=hang)
        feed.finish(timeout=timeout)
    wait_until(
        lambda: set(range(count)) <= set(collector.seqs()),
        timeout,
        message=lambda: f"missing {count - len(set(collector.seqs()) & set(range(count)))}",
    )
    took = time.monotonic() - started
    assert relay.terminate(timeout=30) == 0, relay.log_tail()
    return took


def assert_each_arrived(
    collector: RsyslogCollector, relay: RelayProcess, count: int, *, what: str, took: float
) -> None:
    """Numbers 0..count-1 arrived, nothing else; duplicates are at most what the
    relay's output "central" counted as ``resent`` (and said so in its log)."""
    seqs = collector.seqs()
    duplicates = sum(n - 1 for n in seqs.values())
    log = relay.log()
    resent = relay_counters(log, "output", "central").get("resent", 0)
    print(f"{what}: {count} in {took:.1f} s, {duplicates} duplicates, {resent} resent")
    assert set(seqs) == set(range(count))
    assert resent == 0 or "messages not all acknowledged" in log
    assert duplicates <= resent, (duplicates, resent)


def shortfall(collector: RsyslogCollector, count: int, config: Path, relay_input: str) -> str:
    """Why numbers 0..count-1 have not all arrived: the first missing ones, and
    what the running relay (``config``) received on ``relay_input`` and
    delivered. A relay that received fewer than ``count`` never had the rest:
    they were lost before it (the sending rsyslog)."""
    missing = sorted(set(range(count)) - set(collector.seqs()))
    doc = relay_stats(config)
    received = doc["inputs"][relay_input]["received"]
    delivered = {name: entry["delivered"] for name, entry in doc["outputs"].items()}
    return (
        f"collector has {count - len(missing)} of {count}, missing {missing[:10]}; "
        f"the relay received {received} on input {relay_input}, delivered {delivered}"
    )


def relay_counters(log: str, kind: str, name: str) -> dict[str, int]:
    """The counters a relay logs for one component when it stops."""
    line = next(x for x in log.splitlines() if f"relay: {kind} {name}: " in x)
    fields = line.split(f"relay: {kind} {name}: ")[1]
    if fields == "nothing":
        return {}
    return {k: int(v) for k, v in (f.split("=") for f in fields.split(", "))}


def relay_stats(config: Path) -> dict[str, Any]:
    """``relay stats --json -c config``: the status document of the relay
    that runs ``config``."""
    path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    result = subprocess.run(
        [sys.executable, "-m", "relay", "stats", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc
