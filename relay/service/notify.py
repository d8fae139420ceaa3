"""systemd's service notifications (sd_notify(3)): a few lines of socket code.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, the address of a unix
datagram socket (a path, or ``@name`` for the abstract namespace), and waits
for ``READY=1`` before it calls the service started. Each notification is one
datagram of ``KEY=value`` lines. relay sends:

* ``READY=1`` once every input is bound and listening (the kernel accepts
  connections from then on), with a ``STATUS=`` line;
* ``STOPPING=1`` when SIGTERM or SIGINT starts the stop;
* ``RELOADING=1`` (with ``MONOTONIC_USEC``, as systemd 253's
  ``Type=notify-reload`` wants) then ``READY=1`` around a reload;
* ``WATCHDOG=1`` every half ``WatchdogSec`` when systemd asks for it
  (``WATCHDOG_USEC``, and ``WATCHDOG_PID`` naming this process if set), from a
  trio task of the relay's own event loop: a loop that is stuck pings no more
  and systemd restarts the relay;
* ``STATUS=`` with a one-line summary whenever it changes (checked every
  :data:`STATUS_INTERVAL` s), for ``systemctl status``.

Without ``NOTIFY_SOCKET`` nothing is sent and nothing runs. The socket is
connected once, when the relay is built: before it drops root (``--user``), so
a notify socket only root may reach still gets every notification (a unix
datagram socket checks the path's permissions at connect, not at each send).
A notification that cannot be sent is logged once and never stops the relay.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import trio

log = logging.getLogger("relay")

# How often the summary for `systemctl status` is looked at (it is sent only
# when it changed): often enough to follow an outage, cheap (one datagram).
STATUS_INTERVAL = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class NotifySettings:
    """What systemd asked for through the environment."""

    address: str | None = None  # NOTIFY_SOCKET as socket.connect takes it; None: not asked
    watchdog: float | None = None  # seconds between WATCHDOG=1 (half WatchdogSec); None: off
    problem: str = ""  # why part of the environment was ignored, for one log line


def settings_from(environ: Mapping[str, str], pid: int) -> NotifySettings:
    """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` as sd_notify(3) does."""
    raw = environ.get("NOTIFY_SOCKET", "")
    if not raw:
        return NotifySettings()
    if raw.startswith("@"):  # the abstract namespace: a leading NUL byte
        address = "\0" + raw[1:]
    elif raw.startswith("/"):
        address = raw
    else:  # vsock: (systemd 254, for VMs) and anything newer
        return NotifySettings(problem=f"NOTIFY_SOCKET={raw!r} is not a unix socket path")
    usec, watchdog_pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec:
        return NotifySettings(address)
    if watchdog_pid and watchdog_pid != str(pid):  # meant for another process
        return NotifySettings(address)
    if not usec.isdigit() or int(usec) == 0:
        return NotifySettings(address, problem=f"WATCHDOG_USEC={usec!r} is not a positive number")
    return NotifySettings(address, watchdog=int(usec) / 2_000_000)


def one_line(text: str) -> str:
    """A STATUS= value: the protocol is one KEY=value a line."""
    return " ".join(text.split())


class Notifier:
    """Sends notifications to systemd; does nothing when not asked to."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self._sock: socket.socket | None = None
        self._status = ""  # the last STATUS= sent
        self._failure = ""  # the last failure logged: each is logged once
        if settings.problem:
            log.warning("relay: systemd: %s; ignored", settings.problem)
        if settings.address is not None:
            self._connect()

    @classmethod
    def from_environ(cls) -> Notifier:
        return cls(settings_from(os.environ, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.settings.address is not None

    def ready(self, status: str) -> None:
        self._send("READY=1", f"STATUS={one_line(status)}")
        self._status = one_line(status)

    def reloading(self) -> None:
        """Before a reload; :meth:`ready` again when it is done (either way)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self, status: str) -> None:
        self._send("STOPPING=1", f"STATUS={one_line(status)}")
        self._status = one_line(status)

    def status(self, text: str) -> None:
        """STATUS= if it changed since the last one sent."""
        if one_line(text) != self._status:
            self._status = one_line(text)
            self._send(f"STATUS={self._status}")

    async def keep_alive(self, summary: Callable[[], str]) -> None:
        """WATCHDOG=1 every half WatchdogSec, STATUS= when ``summary()`` changes.

        Runs in the relay's nursery until cancelled; returns at once without
        NOTIFY_SOCKET. The pings come from this task, so they stop when the
        event loop stops running tasks (a blocking call, a busy loop).
        """
        if not self.enabled:
            return
        watchdog = self.settings.watchdog
        interval = STATUS_INTERVAL if watchdog is None else min(STATUS_INTERVAL, watchdog)
        while True:
            await trio.sleep(interval)
            text = one_line(summary())
            fields = ["WATCHDOG=1"] if watchdog is not None else []
            if text != self._status:
                fields.append(f"STATUS={text}")
                self._status = text
            if fields:
                self._send(*fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> None:
        address = self.settings.address
        assert address is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            self._failed(exc)
            return
        sock.setblocking(False)  # never wait for systemd: a full queue skips one ping
        self.close()
        self._sock = sock

    def _send(self, *fields: str) -> None:
        if not self.enabled:
            return
        payload = "".join(f"{field}\n" for field in fields).encode()
        for attempt in (1, 2):  # once more after connecting again (systemd re-executed)
            if self._sock is None:
                self._connect()
                if self._sock is None:
                    return
            try:
                self._sock.send(payload)
            except BlockingIOError:
                return
            except OSError as exc:
                self.close()
                if attempt == 2:
                    self._failed(exc)
                continue
            self._failure = ""
            return

    def _failed(self, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        if reason != self._failure:
            self._failure = reason
            address = (self.settings.address or "").replace("\0", "@", 1)
            log.warning("relay: systemd notification to %s failed: %s", address, reason)
