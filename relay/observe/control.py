"""The control socket: ``state_dir/control.sock``, what ``relay stats`` reads.

A unix stream socket, mode 0600 (the relay's user only), or 0660 with the
group ``[relay] control_group`` names. The protocol is one line each way: the
client sends a command and a newline (``stats``), the relay answers one JSON
document and a newline and closes the connection. An unknown command is
answered ``{"error": "..."}``.

No client can hurt the relay through it: a request is at most
MAX_REQUEST bytes and must arrive within REQUEST_TIMEOUT, the answer must be
taken within the same time, at most MAX_CLIENTS are served at once (others
are closed at once), and each of these is counted (``control`` in the
stats). The relay owns its state directory (the lock), so a socket file left
there by a relay that was killed is its own: removed and bound again.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from relay.errors import StartupError
from relay.observe.clients import MAX_CLIENTS, REQUEST_TIMEOUT, Clients, read_request
from relay.stats import Counters

log = logging.getLogger("relay")

SOCKET_NAME = "control.sock"
# A command is a word; a line longer than this is not one.
MAX_REQUEST = 1024

# A command's answer; a coroutine for one that must wait (the parent of
# worker processes asks each of them: relay/observe/fleet.py).
Command = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


class ControlServer:
    """The listening control socket and its commands (name -> answer)."""

    def __init__(
        self, path: Path, commands: Mapping[str, Command], counters: Counters, *, group: int = -1
    ) -> None:
        self.path = path
        self.commands = dict(commands)
        self.counters = counters
        self.group = group
        self.sock: trio.socket.SocketType | None = None
        self._clients = Clients("control socket", self._answer, counters)

    async def open(self) -> None:
        """Bind the socket (StartupError with one line on failure)."""
        path = self.path
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                if path.is_socket():
                    path.unlink()  # a killed relay's: ours, by the state_dir lock
            await sock.bind(os.fspath(path))
            if self.group >= 0:
                os.chown(path, -1, self.group)
                os.chmod(path, 0o660)
            else:
                os.chmod(path, 0o600)
            sock.listen(MAX_CLIENTS)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EEXIST or isinstance(exc, FileExistsError):
                reason = "a file that is not a socket is in the way"
            raise StartupError(f"cannot create the control socket {path}: {reason}") from None
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def serve(self) -> None:
        """Answer clients until cancelled; the socket file is removed at the end."""
        assert self.sock is not None, "open() first"
        try:
            async with trio.open_nursery() as nursery:
                await self._clients.accept(trio.SocketListener(self.sock), nursery)
        finally:
            self.close()

    async def _answer(self, stream: trio.SocketStream) -> bytes | None:
        """The answer to the client's line; None if it sent none."""
        request, _ = await read_request(stream, lambda got: b"\n" in got, MAX_REQUEST)
        line, newline, _ = request.partition(b"\n")
        command = line.strip().decode("ascii", "replace")
        if not newline or len(line) > MAX_REQUEST or command not in self.commands:
            self.counters.add("bad_requests")
            if not request:
                return None
            shown = command[:40] if newline else "no command line"
            known = ", ".join(sorted(self.commands))
            return _encode({"error": f"unknown command {shown!r} (commands: {known})"})
        self.counters.add("requests")
        try:
            return _encode(await answer(self.commands[command]))
        except Exception as exc:  # a bug: the client gets one line, the relay goes on
            log.exception("relay: control command %r failed", command)
            return _encode({"error": f"{command} failed: {type(exc).__name__}: {exc}"})


async def answer(command: Command) -> Mapping[str, Any]:
    """What ``command`` answers, awaited if it must wait."""
    result = command()
    return await result if inspect.isawaitable(result) else result


def _encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


class NotRunning(Exception):
    """No relay answers on the control socket; ``str()`` is the one line why."""


def request(path: Path, command: str, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """Send ``command`` to the relay whose control socket is ``path``; its answer.

    Blocking (for the CLI). NotRunning when nothing listens there.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(f"relay is not running (no control socket at {path})") from None
        except PermissionError:
            raise NotRunning(
                f"permission denied on {path}: run as the relay's user or a member of its "
                "control_group"
            ) from None
        except OSError as exc:
            raise NotRunning(f"cannot reach the relay at {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        except TimeoutError:
            raise NotRunning(f"the relay at {path} did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise NotRunning(f"the relay at {path} closed the connection: {exc}") from None
    data = b"".join(chunks)
    try:
        answer = json.loads(data)
    except ValueError:
        raise NotRunning(f"the relay at {path} answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise NotRunning(f"the relay at {path} answered something unexpected")
    if "error" in answer:
        raise NotRunning(f"the relay says: {answer['error']}")
    return answer
