"""relay/service/notify.py: the environment read as sd_notify(3) reads it, and
datagrams as a real unix socket receives them."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from relay.service.notify import (
    STATUS_INTERVAL,
    Notifier,
    NotifySettings,
    one_line,
    settings_from,
)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, NotifySettings()),
        ({"NOTIFY_SOCKET": ""}, NotifySettings()),
        ({"NOTIFY_SOCKET": "/run/systemd/notify"}, NotifySettings("/run/systemd/notify")),
        ({"NOTIFY_SOCKET": "@sd-notify/1"}, NotifySettings("\0sd-notify/1")),
        (
            {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "30000000"},
            NotifySettings("/n", watchdog=15.0),
        ),
        (
            {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"},
            NotifySettings("/n", watchdog=15.0),
        ),
        # The watchdog is meant for another process (a child inherited it).
        (
            {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"},
            NotifySettings("/n"),
        ),
        # A watchdog without NOTIFY_SOCKET has nowhere to go.
        ({"WATCHDOG_USEC": "30000000"}, NotifySettings()),
        (
            {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "0"},
            NotifySettings("/n", problem="WATCHDOG_USEC='0' is not a positive number"),
        ),
        (
            {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "soon"},
            NotifySettings("/n", problem="WATCHDOG_USEC='soon' is not a positive number"),
        ),
        (
            {"NOTIFY_SOCKET": "vsock:2:1234"},
            NotifySettings(problem="NOTIFY_SOCKET='vsock:2:1234' is not a unix socket path"),
        ),
    ],
)
def test_settings_from_the_environment(environ: dict[str, str], expected: NotifySettings) -> None:
    assert settings_from(environ, pid=42) == expected


def test_status_is_one_line() -> None:
    assert one_line("2 inputs\nlistening;\t 1  up ") == "2 inputs listening; 1 up"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    with sock:
        yield sock, path


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock`` (none: an empty list)."""
    found = []
    sock.setblocking(False)
    try:
        while True:
            found.append(sock.recv(4096))
    except BlockingIOError:
        return found
    finally:
        sock.settimeout(5)


def test_ready_stopping_and_status_reach_the_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier(NotifySettings(path))
    notifier.ready("2 inputs\nlistening")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 inputs listening\n"
    notifier.status("2 inputs listening")  # unchanged: nothing sent
    notifier.status("1 input listening")
    notifier.stopping("SIGTERM received")
    assert received(sock) == [
        b"STATUS=1 input listening\n",
        b"STOPPING=1\nSTATUS=SIGTERM received\n",
    ]
    notifier.reloading()
    (reloading,) = received(sock)
    fields = dict(line.split(b"=", 1) for line in reloading.splitlines())
    assert fields[b"RELOADING"] == b"1"
    assert abs(int(fields[b"MONOTONIC_USEC"]) - _monotonic_usec()) < 5_000_000
    notifier.close()


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_namespace_address() -> None:
    name = f"relay-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier(settings_from({"NOTIFY_SOCKET": f"@{name}"}, os.getpid()))
        notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up\n"
        notifier.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_runs() -> None:
    notifier = Notifier(NotifySettings())
    assert not notifier.enabled
    notifier.ready("up")
    notifier.stopping("down")

    async def main() -> None:
        with trio.fail_after(1):
            await notifier.keep_alive(lambda: "up")  # returns at once

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_socket_that_is_gone_is_one_warning_and_no_error(
    receiver: tuple[socket.socket, str],
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    sock, path = receiver
    notifier = Notifier(NotifySettings(path))
    request.addfinalizer(notifier.close)
    sock.close()
    os.unlink(path)
    with caplog.at_level(logging.WARNING, logger="relay"):
        notifier.ready("up")
        notifier.status("still up")
    assert [r.getMessage() for r in caplog.records] == [
        f"relay: systemd notification to {path} failed: No such file or directory"
    ]


async def test_watchdog_pings_every_half_watchdog_sec(
    receiver: tuple[socket.socket, str],
    autojump_clock: trio.testing.MockClock,
    request: pytest.FixtureRequest,
) -> None:
    sock, path = receiver
    notifier = Notifier(NotifySettings(path, watchdog=1.5))
    request.addfinalizer(notifier.close)
    notifier.ready("up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up\n"
    status = ["up"]
    with trio.move_on_after(4.6):  # pings at 1.5, 3.0, 4.5 on trio's clock
        await notifier.keep_alive(lambda: status[0])
    assert received(sock) == [b"WATCHDOG=1\n"] * 3
    status[0] = "1 output down"
    with trio.move_on_after(1.6):
        await notifier.keep_alive(lambda: status[0])
    assert received(sock) == [b"WATCHDOG=1\nSTATUS=1 output down\n"]


async def test_without_a_watchdog_only_status_changes_are_sent(
    receiver: tuple[socket.socket, str],
    autojump_clock: trio.testing.MockClock,
    request: pytest.FixtureRequest,
) -> None:
    sock, path = receiver
    notifier = Notifier(NotifySettings(path))
    request.addfinalizer(notifier.close)
    notifier.ready("up")
    sock.recv(4096)
    status = ["up"]

    async def change() -> None:
        await trio.sleep(STATUS_INTERVAL * 2.5)
        status[0] = "down"

    with trio.move_on_after(STATUS_INTERVAL * 5.5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(change)
            await notifier.keep_alive(lambda: status[0])
    assert received(sock) == [b"STATUS=down\n"]
