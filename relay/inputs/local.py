"""Local sockets: ``unix://`` (datagram, as ``/dev/log``) and ``unix+stream://``.

What programs on this host log through syslog(3), ``logger`` or journald's
forwarding (``/run/systemd/journal/syslog``). Three things set these inputs
apart from the network ones:

* **The kernel names the sender.** The datagram socket has ``SO_PASSCRED``
  set: each datagram comes with the sender's pid, uid and gid
  (``SCM_CREDENTIALS``), as the kernel reports them, never what the sender
  wrote in its message. A stream connection's are read once, at accept
  (``SO_PEERCRED``). Messages are grouped into batches by credentials (as UDP
  groups by sender): ``Batch.creds``, for the filters (``pid``, ``uid``,
  ``gid``, ``process``) and the rate limit's ``key = "pid"``. The process
  name (``/proc/PID/comm``) is read only when a filter or ``annotate`` asks,
  and kept a short while in a bounded cache (:class:`ProcessNames`): pids are
  reused.
* **Messages get a host name and the time of reception**, as rsyslog's
  imuxsock does (:mod:`relay.protocol.local`): the timestamp and host part is
  formatted once a second, the rest is a few byte operations a message.
  ``annotate`` appends the credentials to each message as imuxsock's
  ``Annotate`` does.
* **A sender never waits.** Both inputs hand batches on with
  :meth:`Router.put_nowait`: when no output can take a batch (every spool in
  its way is full), it is dropped and counted (``dropped_full``) and the
  drops are summed up in one log line an interval (:class:`DropSummary`);
  the socket is read on all the same, so that no application blocks in
  syslog(3). A stream connection is never made to wait either: past
  ``max_connections`` a new one is closed at once.

The socket is created with the configured ``mode``; a stale socket left at
the path is replaced, a live one refused (``bind_socket``), and the
socket is removed at the stop.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable

import trio

from relay.config import InputConfig, RateLimitKey
from relay.errors import StartupError
from relay.inputs import datagram
from relay.inputs.datagram import (
    DRAIN_BYTES,
    DRAIN_LIMIT,
    FAULT_LOG_INTERVAL,
)
from relay.inputs.limit import for_input
from relay.inputs.reader import RECV, RECVMSG_CREDS, DatagramReader, Handed
from relay.message import Batch, Creds
from relay.protocol import local
from relay.protocol.framing import OversizePolicy
from relay.spool.router import Router
from relay.stats import Counters, LogLimit

log = logging.getLogger("relay.input")

COUNTERS = (
    *datagram.COUNTERS,
    # Messages no output took because every spool in their way was full: a
    # local sender is never made to wait (summed up in the log once an
    # interval, with the outputs' own dropped_queue_full).
    "dropped_full",
)
STREAM_COUNTERS = (
    *COUNTERS,
    "connections",
    "refused_connections",  # closed at once: max_connections were open
    "framing_errors",
)

# struct ucred (linux/socket.h): pid, uid, gid.
_UCRED = struct.Struct("3i")
# Room for one SCM_CREDENTIALS message.
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size)
# One read of a stream connection (as the TCP input's).
RECV_SIZE = 256 * 1024
# How often the drop summary is logged, at most.
DROP_LOG_INTERVAL = 10.0
# Process names kept (a host runs a few hundred processes that log), and for how
# long: a pid is reused once its process is gone, so a name is read again
# after this, never trusted for long.
PROCESS_NAMES_MAX = 1024
PROCESS_NAME_LIFETIME = 5.0


# On systemd hosts /dev/log is journald's socket (or a link to it); the local
# syslog daemon reads what journald forwards instead (ForwardToSyslog=yes).
_JOURNALD_HINT = (
    " (on a systemd host /dev/log belongs to journald: listen on"
    " unix:///run/systemd/journal/syslog instead)"
)


def bind_socket(
    path: str, mode: int = 0o666, kind: socket.SocketKind = socket.SOCK_DGRAM
) -> socket.socket:
    """A unix socket of ``kind`` bound at ``path`` with ``mode``: a stale socket
    there is replaced, a live one (of either kind) or any other file refused."""
    if _in_use(path):
        raise OSError(errno.EADDRINUSE, f"{path} is in use by another process{_JOURNALD_HINT}")
    if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket{_JOURNALD_HINT}")
    _unlink_socket(path)
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(path)
        os.chmod(path, mode)  # 0666: every local program may log, as with /dev/log
    except OSError:
        sock.close()
        raise
    return sock


def _in_use(path: str) -> bool:
    """True if something is bound to the unix socket at ``path`` (datagram or stream)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except OSError as exc:
        # EPROTOTYPE: a live socket of another type (a stream listener).
        return exc.errno == errno.EPROTOTYPE
    finally:
        probe.close()
    return True


def release_socket(name: str, path: str) -> None:
    """At stop: remove input ``name``'s socket file, or say why it stays."""
    try:
        _unlink_socket(path)
    except PermissionError:  # root made it, and we run as --user now
        log.info("input %s: %s is left behind (the next start replaces it)", name, path)


def _unlink_socket(path: str) -> None:
    """Remove a stale socket left by an earlier run; never remove anything else."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def unix_queue_length() -> int:
    """How many datagrams a unix socket queues before its senders block
    (net.unix.max_dgram_qlen, in this network namespace; the kernel's
    default, 10, when it cannot be read)."""
    try:
        with open("/proc/sys/net/unix/max_dgram_qlen", "rb") as f:
            return max(1, int(f.read()))
    except (OSError, ValueError):
        return 10


class ProcessNames:
    """A pid's name as ``/proc/PID/comm`` gives it, kept ``lifetime`` seconds
    in a least-recently-used table of ``max_entries``; None when it cannot be
    read (the process is gone, or /proc is not mounted)."""

    def __init__(
        self,
        max_entries: int = PROCESS_NAMES_MAX,
        lifetime: float = PROCESS_NAME_LIFETIME,
        *,
        clock: Callable[[], float] = time.monotonic,
        proc: str = "/proc",
    ) -> None:
        self.max_entries = max_entries
        self.lifetime = lifetime
        self.clock = clock
        self.proc = proc
        self.reads = 0  # how often /proc was read (for tests and curiosity)
        # Whether a filter asks for names: a stream input then reads its
        # sender's at accept, while the sender is surely alive.
        self.wanted = False
        self._names: collections.OrderedDict[int, tuple[float, str | None]] = (
            collections.OrderedDict()
        )

    def __call__(self, pid: int) -> str | None:
        now = self.clock()
        names = self._names
        found = names.get(pid)
        if found is not None and now - found[0] < self.lifetime:
            names.move_to_end(pid)
            return found[1]
        name = self._read(pid)
        names[pid] = (now, name)
        names.move_to_end(pid)
        if len(names) > self.max_entries:
            names.popitem(last=False)
        return name

    def _read(self, pid: int) -> str | None:
        self.reads += 1
        try:
            with open(f"{self.proc}/{pid}/comm", "rb") as file:
                raw = file.read(64)
        except OSError:
            return None
        return raw.rstrip(b"\n").decode("utf-8", "replace") or None


class DropSummary:
    """The log of what a local input could not queue: the first drop at once,
    then at most one line an ``interval`` with what was dropped since the last
    line, per output and in all, so that the lines add up to the counters
    (the outputs' ``dropped_queue_full``, the input's ``dropped_full``).
    Time is passed in."""

    def __init__(self, input_name: str, interval: float = DROP_LOG_INTERVAL) -> None:
        self.name = input_name
        self.interval = interval
        self.by_output: collections.Counter[str] = collections.Counter()
        self.lost = 0  # taken by no output
        self._logged_at = float("-inf")

    def dropped(self, outputs: list[str], count: int, lost: bool, now: float) -> None:
        for output in outputs:
            self.by_output[output] += count
        if lost:
            self.lost += count
        if now - self._logged_at >= self.interval:
            self.flush(now)

    def flush(self, now: float) -> None:
        """Log what was dropped since the last line, if anything was."""
        if not self.by_output:
            return
        outputs = ", ".join(f"{name} {count:,}" for name, count in sorted(self.by_output.items()))
        log.warning(
            "input %s: messages dropped, spool full (a local sender is never made to wait): "
            "%s; taken by no output: %s (at most one line every %g s)",
            self.name,
            outputs,
            f"{self.lost:,}",
            self.interval,
        )
        self.by_output.clear()
        self.lost = 0
        self._logged_at = now

    async def run(self) -> None:
        """Once an interval: the line for drops since the last one."""
        while True:
            await trio.sleep(self.interval)
            self.flush(trio.current_time())


def default_hostname() -> str:
    """The local host name as ``hostname -s`` (and rsyslog's $LocalHostName) give it."""
    return socket.gethostname().split(".", 1)[0] or "localhost"


class _LocalInput:
    """What both local inputs share: from frames and credentials to the router."""

    counter_names: tuple[str, ...] = COUNTERS

    def __init__(
        self,
        config: InputConfig,
        router: Router,
        counters: Counters,
        process_names: ProcessNames | None = None,
        *,
        creds_wanted: bool = True,
    ) -> None:
        """``creds_wanted``: whether anything reads the senders' credentials (a
        filter, this input's rate limit or ``annotate`` make it so anyway)."""
        self.config = config
        self.router = router
        self.counters = counters
        self.limit = for_input(config, counters)
        self.sock: socket.socket | None = None
        self.address = config.endpoint.url
        self.process_names = process_names or ProcessNames()
        limit = config.rate_limit
        self.creds_wanted = (
            creds_wanted or config.annotate or (limit is not None and limit.key is RateLimitKey.PID)
        )
        self.drops = DropSummary(config.name)
        self._hostname = (config.hostname or default_hostname()).encode("ascii", "replace")
        self._second = -1
        self._head = b""
        self._scope = trio.CancelScope()
        self._fault_log = LogLimit(FAULT_LOG_INTERVAL, "errors like it not logged")

    def open(self) -> None:
        """Create and bind the socket; StartupError with one clear line on failure."""
        endpoint = self.config.endpoint
        try:
            self.sock = self._bind()
            self.sock.setblocking(False)
        except OSError as exc:
            if self.sock is not None:
                self.sock.close()
            raise StartupError(
                f"input {self.config.name}: cannot listen on {endpoint.url}: {exc.strerror or exc}"
            ) from None

    def _bind(self) -> socket.socket:
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop receiving (what the kernel still holds is lost, as with any lossy input)."""
        self._scope.cancel()

    async def serve(self) -> None:
        """Receive until stopped or cancelled; the socket is removed at the end."""
        sock = self.sock
        assert sock is not None
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.drops.run)
                    await self._serve(sock)
        finally:
            sock.close()
            release_socket(self.config.name, self.config.endpoint.path)
            self.drops.flush(trio.current_time())

    async def _serve(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def _head_for(self, now: float) -> bytes:
        """The timestamp and host name every message of this second gets."""
        second = int(now)
        if second != self._second:
            t = time.localtime(second)
            stamp = local.bsd_timestamp(t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
            self._head = local.prefix(stamp, self._hostname)
            self._second = second
        return self._head

    def queue(self, messages: list[bytes], creds: Creds | None, now: float) -> None:
        """Hand one sender's messages on; never waits (drops are counted)."""
        messages = local.fill_in(messages, self._head_for(now))
        if self.config.annotate and creds is not None:
            pid, uid, gid = creds
            suffix = local.annotation(pid, uid, gid, self.process_names(pid))
            messages = [m + suffix for m in messages]
        batch = Batch(messages, received=now, input=self.config.name, creds=creds, stamped=True)
        if self.limit is not None:
            limited = self.limit.admit(batch)
            if limited is None:
                return
            batch = limited
        taken, dropped = self.router.offer(batch)
        if dropped:
            count = len(batch)
            if not taken:
                self.counters.add("dropped_full", count)
            self.drops.dropped(dropped, count, not taken, trio.current_time())

    def fault(self, exc: Exception, count: int) -> None:
        datagram.report_fault(
            self.config.name, self.counters, self._fault_log, exc, f"{count} messages"
        )


class LocalDatagramInput(_LocalInput):
    """``unix://PATH``: one datagram is one message, with the sender's credentials.

    The credentials cost about 2 us a datagram (SO_PASSCRED in the kernel,
    recvmsg_into and its ancillary data instead of recvfrom_into: 4.0 against
    2.0 us here): they are read only when something reads them
    (``creds_wanted``); otherwise the batch's ``creds`` are None.

    A thread reads the socket as datagrams come, so that the kernel's queue
    (net.unix.max_dgram_qlen datagrams: 10 by default, 512 under systemd)
    never fills and no sender blocks, and hands them to trio a batch at a
    time (relay/inputs/reader.py; with a queue of 64 or more it naps
    between looks)."""

    reader: DatagramReader | None = None  # while serving
    kernel_queue = 10  # datagrams its socket queues (read at the bind)

    def _bind(self) -> socket.socket:
        # Read while binding: the relay may run as another user by the time
        # it serves (--user), and what it has not imported by then it cannot.
        self.kernel_queue = unix_queue_length()
        sock = bind_socket(self.config.endpoint.path, self.config.socket_mode)
        if self.creds_wanted:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        reader = self.reader = DatagramReader(
            self.config.name,
            sock,
            RECVMSG_CREDS if self.creds_wanted else RECV,
            max_message_size=self.config.max_message_size,
            truncate=self.config.oversize is OversizePolicy.TRUNCATE,
            drain_limit=DRAIN_LIMIT,
            drain_bytes=DRAIN_BYTES,
            buffer_size=self.config.max_message_size + 1,
            kernel_queue=self.kernel_queue,
        )
        await reader.run(self._deliver)

    def _deliver(self, handed: Handed) -> None:
        handed.count_into(self.counters)
        unpack = _UCRED.unpack
        try:
            for key, messages in handed.groups.items():
                assert isinstance(key, bytes)
                creds = unpack(key) if len(key) == _UCRED.size else None
                self.queue(messages, creds, handed.received)
        except Exception as exc:  # the guard: this hand-over's datagrams, not the input
            self.fault(exc, handed.count)


class LocalStreamInput(_LocalInput):
    """``unix+stream://PATH``: connections of LF-, NUL-terminated or octet-counted
    frames (``logger -T``, glibc's syslog(3) on a stream socket, ``logger
    --octet-count``), with each connection's credentials."""

    counter_names = STREAM_COUNTERS

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.open_connections = 0
        self._refused_log = LogLimit(DROP_LOG_INTERVAL, "connections turned away")

    def _bind(self) -> socket.socket:
        sock = bind_socket(self.config.endpoint.path, self.config.socket_mode, socket.SOCK_STREAM)
        sock.listen(socket.SOMAXCONN)
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                except OSError as exc:
                    # Out of file descriptors: say so, and give others time to close.
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        self._refuse(f"cannot accept: {exc.strerror}")
                        await trio.sleep(0.1)
                    continue
                if self.open_connections >= self.config.max_connections:
                    conn.close()
                    self._refuse(
                        f"{self.config.max_connections} connections open (max_connections)"
                    )
                    continue
                conn.setblocking(False)
                try:
                    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                    creds: Creds | None = _UCRED.unpack(raw)
                except OSError:
                    creds = None
                if creds is not None and (self.config.annotate or self.process_names.wanted):
                    self.process_names(creds[0])
                self.counters.add("connections")
                self.open_connections += 1
                nursery.start_soon(self._connection, conn, creds)

    def _refuse(self, why: str) -> None:
        self.counters.add("refused_connections")
        self._refused_log.log(
            log,
            logging.WARNING,
            "refused",
            f"input {self.config.name}: a connection closed at once: {why}",
            trio.current_time(),
        )

    async def _connection(self, conn: socket.socket, creds: Creds | None) -> None:
        reader = local.StreamDecoder(self.config.max_message_size, self.config.oversize)
        counters = self.counters
        try:
            while True:
                await trio.lowlevel.wait_readable(conn)
                try:
                    data = conn.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                frames = reader.receive_data(data)
                for name, amount in reader.take_counts():
                    counters.add(name, amount)
                counters.add("bytes", len(data))
                if frames:
                    counters.add("received", len(frames))
                    try:
                        self.queue(frames, creds, time.time())
                    except Exception as exc:  # the guard: these frames, not the connection
                        self.fault(exc, len(frames))
                if not data:
                    return
        finally:
            conn.close()
            self.open_connections -= 1
