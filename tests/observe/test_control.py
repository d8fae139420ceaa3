"""relay/observe/control.py: the control socket's protocol and limits."""

from __future__ import annotations

import contextlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from relay.errors import StartupError
from relay.observe import clients, control
from relay.stats import Counters


async def open_server(tmp_path: Path, group: int = -1) -> control.ControlServer:
    counters = Counters("control", "c", clients.COUNTERS)
    server = control.ControlServer(
        tmp_path / "control.sock", {"stats": lambda: {"ok": 1}}, counters, group=group
    )
    await server.open()
    return server


async def ask(path: Path, data: bytes) -> bytes:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.connect(str(path))
    stream = trio.SocketStream(sock)
    async with stream:
        if data:
            await stream.send_all(data)
        chunks = []
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "answer"),
    [
        (b"stats\n", {"ok": 1}),
        (b"  stats \r\n", {"ok": 1}),
        (b"nope\n", "unknown command 'nope'"),
        (b"\xff\x00garbage\n", "unknown command"),
    ],
)
async def test_answers(tmp_path: Path, request_bytes: bytes, answer: object) -> None:
    server = await open_server(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        got: dict[str, Any] = json.loads(await ask(server.path, request_bytes))
        nursery.cancel_scope.cancel()
    if isinstance(answer, str):
        assert answer in got["error"]
    else:
        assert got == answer


async def test_mode_and_removal(tmp_path: Path) -> None:
    (tmp_path / "control.sock").touch()
    with pytest.raises(StartupError, match="cannot create the control socket"):
        await open_server(tmp_path)  # a regular file is never removed
    (tmp_path / "control.sock").unlink()
    server = await open_server(tmp_path)
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert not server.path.exists()  # removed at the end
    server = await open_server(tmp_path, group=0)
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o660
    assert server.path.stat().st_gid == 0
    server.close()


async def test_silent_clients_time_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    server = await open_server(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        with trio.fail_after(clients.REQUEST_TIMEOUT + 1):
            assert await ask(server.path, b"") == b""
        assert json.loads(await ask(server.path, b"stats\n")) == {"ok": 1}
        nursery.cancel_scope.cancel()
    assert server.counters["timeouts"] == 1


async def test_an_endless_line_is_cut_off(tmp_path: Path) -> None:
    """More than MAX_REQUEST bytes without a newline: answered (or reset), counted,
    and the next client is served."""
    server = await open_server(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        with contextlib.suppress(trio.BrokenResourceError):
            await ask(server.path, b"x" * (control.MAX_REQUEST * 4))
        assert json.loads(await ask(server.path, b"stats\n")) == {"ok": 1}
        nursery.cancel_scope.cancel()
    assert server.counters["bad_requests"] == 1


def test_the_client_says_when_no_relay_runs(tmp_path: Path) -> None:
    with pytest.raises(control.NotRunning, match="relay is not running"):
        control.request(tmp_path / "control.sock", "stats")
