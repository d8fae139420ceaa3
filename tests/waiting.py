"""Waiting for a condition with a deadline: what tests do instead of sleeping.

``wait_until`` polls in real time (for subprocesses and sockets driven from a
plain test), ``await_until`` on trio's clock (virtual under ``autojump_clock``).
Both fail with what was last seen, never hang.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import trio

T = TypeVar("T")

Message = str | Callable[[], str]


def _timeout_message(message: Message, timeout: float, last: object) -> str:
    text = message() if callable(message) else message
    prefix = f"{text}: " if text else ""
    return f"{prefix}timed out after {timeout}s; last value: {last!r}"


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    message: Message = "",
) -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy.

    Returns that value; raises AssertionError with ``message`` and the last
    value seen when ``timeout`` s pass first. ``message`` may be a callable,
    called only then (to show state at the time of failure).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_message(message, timeout, value))
        time.sleep(interval)


@overload
async def await_until(
    predicate: Callable[[], Awaitable[T]],
    timeout: float,
    interval: float = ...,
    message: Message = ...,
) -> T: ...


@overload
async def await_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = ...,
    message: Message = ...,
) -> T: ...


async def await_until(
    predicate: Callable[[], Any],
    timeout: float,
    interval: float = 0.02,
    message: Message = "",
) -> Any:
    """The trio twin of ``wait_until``; ``predicate`` may be sync or async.

    Uses trio's clock, so under ``autojump_clock`` the deadline is virtual.
    """
    deadline = trio.current_time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if trio.current_time() >= deadline:
            raise AssertionError(_timeout_message(message, timeout, value))
        await trio.sleep(interval)
