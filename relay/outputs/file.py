"""File output: append messages to local files (as rsyslog writes them), or to standard output.

Formats: ``lines`` writes each message followed by LF, ``octet-counted``
writes RFC 6587 frames that keep every byte unambiguous, ``traditional``,
``rsyslog`` and ``rfc5424`` write what rsyslog's file templates write
(relay/protocol/rsyslogfile.py), and ``json`` one JSON object per line
(relay/protocol/jsonform.py, with the output's enrichment, read at ``open``).

The path may hold ``{placeholders}`` (config.PATH_PLACEHOLDERS): a batch's
messages are grouped by the path they go to, so the cost is one lookup per
message and one write per distinct path, and at most ``max_open_files`` stay
open (the least recently used is closed). A value that would leave its
directory (``/``, ``.``, ``..``, NUL, empty) becomes ``_``.

Files and directories are created with the configured modes (exactly: the
umask does not apply) and the file chowned to ``owner``/``group``, at creation
only, as rsyslog does.

Writes are coalesced: a batch is formatted into a buffer at once, and the
buffer is written by one worker-thread call at least every ``flush_interval``
(sooner once it holds ``FLUSH_BYTES``); with ``fsync`` each file written is
then synced. The delivery contract holds: a batch is acked in its spool only
once its bytes are written (the window keeps it in flight until the flush),
so a crash before the flush loses nothing that was acked, and a stop flushes
first. On SIGHUP every file is closed and opened again at its next write
(logrotate). A failed write (disk full, closed pipe) is retried with
back-off, from where it stopped; nothing is dropped or written twice.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import socket
import time

import trio

from relay.config import FileSettings, OutputConfig
from relay.errors import StartupError
from relay.message import Batch
from relay.outputs.delivery import Output
from relay.outputs.window import Flight
from relay.policy.backoff import Backoff
from relay.protocol import jsonform, rsyslogfile
from relay.protocol.framing import encode_lines, encode_octet_counted
from relay.service.enrichment import json_options
from relay.spool.spool import Spool
from relay.stats import Counters

log = logging.getLogger("relay.output")

STDOUT = "-"
# A buffer this large is written at once, whatever the flush interval: one
# write of 256 KiB amortises the syscall, and bounds what waits in memory.
FLUSH_BYTES = 256 * 1024

_FACILITIES = (
    *("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron"),
    *("authpriv", "ftp", "ntp", "audit", "alert", "clock"),
    *(f"local{n}" for n in range(8)),
)
_SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
# Placeholders whose value is the same for a whole batch.
_BATCH_FIELDS = frozenset({"source", "input", "year", "month", "day"})


def local_hostname() -> str:
    """The short host name, as ``hostname -s`` and rsyslog's $LocalHostName give it."""
    return socket.gethostname().split(".", 1)[0] or "localhost"


def safe_component(value: str) -> str:
    """A placeholder's value that cannot leave its directory."""
    if value in ("", ".", ".."):
        return "_"
    return value.replace("/", "_").replace("\0", "_")


def peer_host(peer: str, fallback: str) -> str:
    """The sender's address without the port (rsyslog's fromhost-ip), or
    ``fallback`` for a local sender (a socket path, or none)."""
    if peer.startswith("["):
        return peer[1 : peer.find("]")]
    host, sep, port = peer.rpartition(":")
    if sep and port.isdigit() and host and "/" not in host:
        return host
    return fallback


class FileOutput(Output):
    def __init__(self, config: OutputConfig, spool: Spool, counters: Counters) -> None:
        super().__init__(config, spool, counters)
        settings = self.config.file
        if not settings.path:  # a config built in code, without the parser
            settings = FileSettings(path=(self.config.endpoint.path,))
        self.settings = settings
        self.files: collections.OrderedDict[str, int] = collections.OrderedDict()
        fmt = self.config.format
        self._encode = rsyslogfile.formatter(fmt) if fmt in rsyslogfile.FORMATS else None
        self._frame = encode_octet_counted if fmt == "octet-counted" else encode_lines
        self._json: jsonform.JsonOptions | None = None  # format "json": set by open()
        self._hostname = local_hostname()
        # What is formatted and not yet written: per path, in order.
        self._buffers: dict[str, list[bytes]] = {}
        self._buffered = 0  # bytes in _buffers
        self._since = 0.0  # when _buffers last became non-empty (trio clock)
        # Generations: each delivery's data gets the next number; a flight is
        # safe once a flush wrote everything up to its number.
        self._generation = 0
        self._flushed = 0
        self._waiting: list[tuple[int, Flight[None]]] = []
        # Head batches (after the window) already in _buffers but without a
        # flight yet: a delivery that failed in its own flush is retried with
        # the same batches, which must not be formatted twice.
        self._carried = 0
        self._lock = trio.Lock()
        self._flusher = False
        self._reopen = False
        self._warned: set[str] = set()

    # -- opening and closing ------------------------------------------------------

    async def open(self) -> None:
        if self.config.format == "json":
            self._json = json_options(self.config.json, output=self.name)
        path = self.config.endpoint.path
        if self.settings.dynamic or path == STDOUT:
            return
        try:
            self._fd(path)
        except OSError as exc:
            raise StartupError(f"output {self.name}: cannot open {path}: {exc.strerror}") from None

    def _fd(self, path: str) -> int:
        """The open file for ``path`` (opened, and created as configured, if need be)."""
        files = self.files
        fd = files.get(path)
        if fd is not None:
            files.move_to_end(path)
            return fd
        fd = 1 if path == STDOUT else self._create(path)
        files[path] = fd
        while len(files) > self.settings.max_open_files:
            _, old = files.popitem(last=False)
            _close(old)
        return fd

    def _create(self, path: str) -> int:
        settings = self.settings
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            pass
        directory = os.path.dirname(path)
        if settings.create_dirs and directory and not os.path.isdir(directory):
            self._make_dirs(directory)
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, settings.file_mode)
        except FileExistsError:  # created meanwhile: it is someone else's
            return os.open(path, flags)
        try:
            os.fchmod(fd, settings.file_mode)  # exactly: not reduced by the umask
            if settings.uid != -1 or settings.gid != -1:
                os.fchown(fd, settings.uid, settings.gid)
        except OSError as exc:
            self._warn_once(path, f"cannot set the owner or mode of {path}: {exc.strerror}")
        return fd

    def _make_dirs(self, directory: str) -> None:
        parent = os.path.dirname(directory)
        if parent and parent != directory and not os.path.isdir(parent):
            self._make_dirs(parent)
        try:
            os.mkdir(directory, self.settings.dir_mode)
        except FileExistsError:
            return
        try:
            os.chmod(directory, self.settings.dir_mode)
        except OSError as exc:
            self._warn_once(directory, f"cannot set the mode of {directory}: {exc.strerror}")

    def _warn_once(self, path: str, text: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("output %s: %s", self.name, text)

    def reopen(self) -> None:
        """Close every file and open it again at its next write (logrotate moved it)."""
        self._reopen = True
        if not self._lock.locked():
            self._close_all()
            self._reopen = False
        log.info("output %s: closed its files; reopened at the next write", self.name)

    def _close_all(self) -> None:
        files, self.files = self.files, collections.OrderedDict()
        for fd in files.values():
            _close(fd)

    async def aclose(self) -> None:
        """Write what is buffered (and ack it), then close every file."""
        if self._buffers:
            try:
                with trio.move_on_after(10):
                    async with self._lock:
                        await self._flush()
                self.window.confirm()
            except OSError as exc:
                # Not acked: still queued, saved with the spool, written at the
                # next start.
                log.warning("output %s: cannot write at stop: %s", self.name, exc.strerror)
        self.window.release()
        self._close_all()

    # -- delivering -----------------------------------------------------------------

    async def deliver(self, batches: list[Batch]) -> None:
        carried = self._carried
        for batch in batches[carried:]:
            self._add(batch)
        self._carried = len(batches)
        if carried < len(batches):
            self._generation += 1
        if self.settings.flush_interval == 0 or self._buffered >= FLUSH_BYTES:
            async with self._lock:
                await self._flush()
        elif not self._flusher and self._nursery is not None:
            self._flusher = True
            self._nursery.start_soon(self._flush_later)
        elif self._nursery is None:  # not running under run(): nothing would flush later
            async with self._lock:
                await self._flush()

    def written(self, batches: list[Batch], now: float) -> None:
        self._carried = 0
        if self._flushed >= self._generation:
            self.window.written(batches, now, None)
        else:
            flight = self.window.written(batches, now, None, awaiting=1)
            self._waiting.append((self._generation, flight))

    def _add(self, batch: Batch) -> None:
        """Format ``batch`` into the buffers of the paths it goes to."""
        if not self._buffers:
            self._since = trio.current_time()
        encode = self._encode
        settings = self.settings
        per_message = settings.dynamic and not _BATCH_FIELDS.issuperset(settings.path[1::2])
        if self._json is not None:
            objects = self._json_objects(batch, self._json)
            if per_message:
                chunks = self._grouped(batch, [line + b"\n" for line in objects])
            else:
                data = b"\n".join(objects) + b"\n" if objects else b""
                chunks = [(self._batch_path(batch), data)]
        elif per_message:
            reception = self._reception(batch)
            encode = encode or self._one_framed
            chunks = self._grouped(batch, [encode(raw, reception) for raw in batch.messages])
        elif encode is None:
            chunks = [(self._batch_path(batch), self._frame(batch.messages))]
        else:
            reception = self._reception(batch)
            data = b"".join([encode(raw, reception) for raw in batch.messages])
            chunks = [(self._batch_path(batch), data)]
        for path, data in chunks:
            self._buffers.setdefault(path, []).append(data)
            self._buffered += len(data)

    def _one_framed(self, raw: bytes, reception: rsyslogfile.Reception) -> bytes:
        return self._frame([raw])

    @staticmethod
    def _json_objects(batch: Batch, options: jsonform.JsonOptions) -> list[bytes]:
        return jsonform.encode_batch(
            batch.messages,
            received=batch.received,
            peer=batch.peer,
            input=batch.input,
            creds=batch.creds,
            options=options,
        )

    def _grouped(self, batch: Batch, lines: list[bytes]) -> list[tuple[str, bytes]]:
        """The batch's formatted ``lines`` (one per message) grouped by the path
        each message goes to."""
        groups: dict[str, list[bytes]] = {}
        values = self._batch_values(batch)
        parts = self.settings.path
        hostname = peer_host(batch.peer, self._hostname).encode("utf-8", "replace")
        for raw, line in zip(batch.messages, lines, strict=True):
            pri, host, app = rsyslogfile.path_fields(raw)
            for name in parts[1::2]:
                if name == "hostname":
                    values[name] = safe_component((host or hostname).decode("utf-8", "replace"))
                elif name == "app_name":
                    values[name] = safe_component(app.decode("utf-8", "replace"))
                elif name == "facility":
                    values[name] = _FACILITIES[pri >> 3] if pri is not None else "invld"
                elif name == "severity":
                    values[name] = _SEVERITIES[pri & 7] if pri is not None else "invld"
            path = _fill(parts, values)
            group = groups.get(path)
            if group is None:
                groups[path] = [line]
            else:
                group.append(line)
        return [(path, b"".join(lines)) for path, lines in groups.items()]

    def _batch_path(self, batch: Batch) -> str:
        parts = self.settings.path
        if len(parts) == 1:
            return parts[0]
        return _fill(parts, self._batch_values(batch))

    def _batch_values(self, batch: Batch) -> dict[str, str]:
        local = time.localtime(batch.received)
        return {
            "source": safe_component(peer_host(batch.peer, self._hostname)),
            "input": safe_component(batch.input),
            "year": f"{local.tm_year:04d}",
            "month": f"{local.tm_mon:02d}",
            "day": f"{local.tm_mday:02d}",
        }

    def _reception(self, batch: Batch) -> rsyslogfile.Reception:
        received = batch.received
        local = time.localtime(received)
        return rsyslogfile.Reception.at(
            local[:6],
            int(received % 1 * 1_000_000),
            local.tm_gmtoff,
            peer_host(batch.peer, self._hostname).encode("utf-8", "replace"),
            batch.stamped,
        )

    # -- flushing -------------------------------------------------------------------

    async def _flush_later(self) -> None:
        """Write the buffers ``flush_interval`` after they started to fill."""
        backoff = Backoff(maximum=self.config.retry_max)
        try:
            while self._buffers:
                await trio.sleep_until(self._since + self.settings.flush_interval)
                try:
                    async with self._lock:
                        await self._flush()
                except OSError as exc:
                    backoff = backoff.increment()
                    delay = backoff.delay(random.random())
                    self._failed(exc, delay)
                    await trio.sleep(delay)
                    continue
                if backoff.failures:
                    log.warning("output %s: writing again", self.name)
                    backoff = backoff.reset()
                    self.last_error = ""
        finally:
            self._flusher = False

    async def _flush(self) -> None:
        """Write every buffer (the caller holds the lock); the flights it covered become safe."""
        if self._reopen:
            self._close_all()
            self._reopen = False
        if not self._buffers:
            return
        generation = self._generation
        buffers, self._buffers = self._buffers, {}
        self._buffered = 0
        jobs = [(path, b"".join(chunks)) for path, chunks in buffers.items()]
        left: list[tuple[str, bytes]] = []
        try:
            # abandon_on_cancel: a write blocked on a stuck pipe or disk must
            # not hold up the stop; the thread finishes (or fails) on its own.
            await trio.to_thread.run_sync(self._write_jobs, jobs, left, abandon_on_cancel=True)
        except BaseException:
            # What was not written goes back in front of anything newer.
            rest = {path: [data] for path, data in left}
            for path, chunks in self._buffers.items():
                rest.setdefault(path, []).extend(chunks)
            self._buffers = rest
            self._buffered = sum(len(c) for chunks in rest.values() for c in chunks)
            raise
        self._flushed = generation
        if self._buffers:
            self._since = trio.current_time()
        waiting = self._waiting
        while waiting and waiting[0][0] <= generation:
            waiting.pop(0)[1].awaiting = 0

    def _write_jobs(self, jobs: list[tuple[str, bytes]], left: list[tuple[str, bytes]]) -> None:
        """Write each path's bytes (in a worker thread); on failure ``left`` holds
        what was not written, the failed path first."""
        synced = []
        for index, (path, data) in enumerate(jobs):
            view = memoryview(data)
            try:
                fd = self._fd(path)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                left.append((path, bytes(view)))
                left.extend(jobs[index + 1 :])
                raise
            synced.append(fd)
        if self.settings.fsync:
            for fd in synced:
                if fd != 1:
                    os.fsync(fd)


def _fill(parts: tuple[str, ...], values: dict[str, str]) -> str:
    out = list(parts)
    for index in range(1, len(parts), 2):
        out[index] = values[parts[index]]
    return "".join(out)


def _close(fd: int) -> None:
    if fd != 1:
        os.close(fd)
