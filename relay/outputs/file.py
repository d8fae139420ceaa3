"""File output: append messages to a file, or write them to standard output.

Formats: ``lines`` writes each message followed by LF (what a person reads;
a message that itself contains LF spans several lines), ``octet-counted``
writes RFC 6587 frames that keep every byte unambiguous. Writes go through a
worker thread so a slow disk or a blocked pipe never stalls the relay. On
SIGHUP the file is reopened (for logrotate). A failed write (disk full,
closed pipe) is retried with back-off; nothing is dropped.
"""

from __future__ import annotations

import logging
import os

import trio

from relay.errors import StartupError
from relay.message import Batch
from relay.outputs.delivery import Output
from relay.protocol.framing import encode_lines, encode_octet_counted

log = logging.getLogger("relay.output")

STDOUT = "-"


class FileOutput(Output):
    fd: int | None = None
    # After a write that failed part way (disk full): how many head batches it
    # covered and their bytes not yet written, so the retry does not write
    # the first part twice.
    _unwritten: tuple[int, bytes] | None = None

    async def open(self) -> None:
        try:
            self._open()
        except OSError as exc:
            raise StartupError(
                f"output {self.name}: cannot open {self.config.endpoint.path}: {exc.strerror}"
            ) from None

    def _open(self) -> None:
        path = self.config.endpoint.path
        if path == STDOUT:
            self.fd = 1
        else:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        """Close and open the file again (after logrotate moved it)."""
        if self.config.endpoint.path == STDOUT:
            return
        old = self.fd
        try:
            self._open()
        except OSError as exc:
            log.error(
                "output %s: cannot reopen %s: %s; still writing to the old file",
                self.name,
                self.config.endpoint.path,
                exc.strerror,
            )
            return
        if old is not None:
            os.close(old)
        log.info("output %s: reopened %s", self.name, self.config.endpoint.path)

    async def deliver(self, batches: list[Batch]) -> None:
        if self.fd is None:
            self._open()
        fd = self.fd
        assert fd is not None
        encode = encode_octet_counted if self.config.format == "octet-counted" else encode_lines
        # Resume a write that failed part way: its unwritten bytes cover the
        # first ``done`` head batches (they are still queued: never acked).
        done, head = self._unwritten or (0, b"")
        data = head + b"".join([encode(b.messages) for b in batches[done:]])
        written = [0]
        try:
            # abandon_on_cancel: a write blocked on a stuck pipe or disk must not
            # hold up the stop; the thread finishes (or fails) on its own.
            await trio.to_thread.run_sync(_write_all, fd, data, written, abandon_on_cancel=True)
        except OSError:
            self._unwritten = (len(batches), data[written[0] :])
            raise
        self._unwritten = None

    async def aclose(self) -> None:
        if self.fd is not None and self.fd != 1:
            os.close(self.fd)
        self.fd = None


def _write_all(fd: int, data: bytes, written: list[int]) -> None:
    """Write all of ``data``; ``written[0]`` tracks progress if it fails."""
    view = memoryview(data)
    while view:
        count = os.write(fd, view)
        written[0] += count
        view = view[count:]
