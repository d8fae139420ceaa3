"""A one-shot timer that costs one ``wait_readable``: Linux's timerfd.

An output that coalesces writes (``delivery.COALESCE_DELAY``) waits a
millisecond or two before a write, hundreds of times a second. ``trio.sleep``
does it with a cancel scope whose deadline expires by raising and catching
``Cancelled``: about 150,000 instructions a wait here (callgrind, a bare loop
of 2,000 waits), against 60,000 for a task that waits for a timerfd to become
readable (the run loop's own share).
The timerfd is also exact to the microsecond, where a trio deadline is
epoll's timeout, rounded up to the next millisecond.

``os.timerfd_create`` came with Python 3.13; before it, libc's is called
through ctypes. Where neither is there (not Linux), or under a test's
``MockClock``, :class:`Timer` sleeps with trio.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import trio

_CLOCK_MONOTONIC = 1  # time.CLOCK_MONOTONIC; a timer of the clock trio uses


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create  # noqa: B018 (present?)
        libc.timerfd_settime  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def _virtual_time() -> bool:
    """Whether trio runs on a test's MockClock, whose time moves by trio's
    deadlines only. (trio.testing imports pytest: it is looked for, never
    imported here.)"""
    testing = sys.modules.get("trio.testing")
    return testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock)


class Timer:
    """``await timer.sleep(seconds)``: one wait, no cancel scope. Not shared
    between tasks; :meth:`close` it when done."""

    def __init__(self) -> None:
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        self._spec = _Itimerspec()
        flags = os.O_NONBLOCK | os.O_CLOEXEC
        create = getattr(os, "timerfd_create", None)
        if create is not None:  # Python 3.13+
            with contextlib.suppress(OSError):
                self._fd = create(_CLOCK_MONOTONIC, flags=flags)
            return
        libc = _libc()
        if libc is not None:
            fd = libc.timerfd_create(_CLOCK_MONOTONIC, flags)
            if fd >= 0:
                self._fd, self._libc = fd, libc

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (more than 0); a checkpoint, as trio.sleep."""
        fd = self._fd
        if fd < 0 or _virtual_time():
            await trio.sleep(seconds)
            return
        self._arm(seconds)
        await trio.lowlevel.wait_readable(fd)
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 8)  # the expiry count: reading it makes the fd unreadable

    def _arm(self, seconds: float) -> None:
        libc = self._libc
        if libc is None:
            os.timerfd_settime(self._fd, initial=seconds)  # type: ignore[attr-defined,unused-ignore]
            return
        whole = int(seconds)
        value = self._spec.it_value
        value.tv_sec = whole
        value.tv_nsec = max(1, int((seconds - whole) * 1e9))  # 0 would disarm it
        if libc.timerfd_settime(self._fd, 0, ctypes.byref(self._spec), None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def close(self) -> None:
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1
