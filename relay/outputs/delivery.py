"""The delivery loop every output shares.

An output waits for batches in its spool, delivers them, and only then acks
them (the single commit point: what was not delivered stays queued). A
failure is logged when its reason changes, not per attempt, and retried
forever with exponential back-off and jitter; the spool holds what waits.

What an output has written and does not yet know safe (plain TCP until the
peer has surely read it, RELP until ``rsp``) is in its :class:`Window`
(relay/outputs/window.py): the next batches are taken after it, it acks what
became safe in order, and after a lost connection it is written again from
the head. The loop asks the output to :meth:`Output.confirm` before each take
and tells it what it has :meth:`Output.written` after each delivery.

A reload hands an output's spool over to the output built from the new
config (:meth:`Output.hand_over`): the loop takes no more batches, waits a
little for what is in flight to become safe, and then stops as at a stop:
what is still in flight stays queued, for the next output to write.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import trio

from relay.config import Endpoint, OutputConfig
from relay.message import Batch
from relay.outputs.window import Window, WindowLost
from relay.policy.backoff import Backoff
from relay.policy.targets import Event, FailedBack, FailedOver, TargetDown, TargetUp
from relay.service.timer import Timer
from relay.spool.spool import Spool
from relay.stats import Counters
from relay.tls.context import ReloadableContext
from relay.tls.profile import DEFAULT_EXPIRY_WARNING_DAYS
from relay.tls.stream import (
    ByteStream,
    HandshakeError,
    PeerCertificates,
    as_byte_stream,
    context_for,
    count_failure,
)
from relay.tls.stream import connect as tls_connect

log = logging.getLogger("relay.output")

# How much one write may carry: large enough to amortise a syscall and an
# await over thousands of messages, small enough to keep latency low.
SEND_BYTES = 1024 * 1024
# With a window of unconfirmed batches and nothing new to send, how often to
# look whether the oldest became safe.
CONFIRM_POLL = 0.2
# Writes are coalesced over this long, at most: a write smaller than
# COALESCE_BYTES that comes sooner than COALESCE_DELAY after the last one
# waits until then and takes what arrived meanwhile. A steady trickle (a
# local socket at 5,000 msg/s: one or two messages per wake-up) then costs
# one write, one window flight and one ack per 2 ms instead of per
# message; a message after a quiet spell goes at once, and none waits
# longer than COALESCE_DELAY for it (bulk traffic fills its writes and
# never waits).
COALESCE_DELAY = 0.002
COALESCE_BYTES = 64 * 1024

COUNTERS = (
    "queued",
    "delivered",
    "bytes",
    "dropped_queue_full",
    "dropped_unreachable",
    "failures",
    "truncated",
    "target_failures",
    "dns_failures",
    "resent",
)

# Errors that mean "this attempt failed, try again later".
RETRYABLE: tuple[type[BaseException], ...] = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
)


class Output:
    """Base of every output: subclasses implement :meth:`deliver`."""

    COUNTERS: tuple[str, ...] = COUNTERS  # the counters this kind of output keeps

    def __init__(self, config: OutputConfig, spool: Spool, counters: Counters) -> None:
        self.config = config
        self.spool = spool
        self.counters = counters
        self.name = config.name
        self.last_error = ""
        self.down_since: float | None = None  # wall time: when last_error was set from none
        # What is written and not yet known safe; by default a batch is safe
        # once deliver() returned (written() below puts it in flight, safe).
        self.window: Window[Any] = Window(spool, counters)
        self._nursery: trio.Nursery | None = None  # background work, while run() runs
        # Whether the loop already yielded to other tasks (slept to coalesce)
        # since it took the batches being delivered; a deliver() that wrote
        # without awaiting (plain TCP, straight to the socket) leaves it
        # False, and the loop yields before its next take if that would not
        # wait anyway (see _deliver_with).
        self.yielded = False
        # tls:// and relp+tls://: one context per target host (the name it must
        # present), built by open() so that bad files stop the start.
        self.tls_contexts: dict[str, ReloadableContext] = {}
        self.tls_peers = PeerCertificates(
            config.tls.expiry_warning_days if config.tls else DEFAULT_EXPIRY_WARNING_DAYS
        )
        # A reload is handing the spool over (hand_over()): take no more batches.
        self.handing_over = False
        self._handed_over = trio.Event()  # nothing is in flight any more

    async def open(self) -> None:
        """Check what can be checked before the relay starts (StartupError)."""
        profile = self.config.tls
        if profile is None:
            return
        for target in self.config.all_targets:
            if target.host not in self.tls_contexts:
                self.tls_contexts[target.host] = context_for(
                    profile,
                    server_side=False,
                    server_hostname=target.host,
                    what=f"output {self.name}"
                    + (f" (tls.{self.config.tls_name})" if self.config.tls_name else ""),
                )

    async def wrap_tls(
        self, stream: trio.SocketStream, endpoint: Endpoint, *, verdict_wait: float = 0.0
    ) -> trio.SocketStream | ByteStream:
        """``stream`` as it is for plain transports; over TLS, after the handshake
        (HandshakeError with the classified reason if it fails)."""
        if self.config.tls is None:
            return stream
        if endpoint.host not in self.tls_contexts:
            await Output.open(self)
        peer = endpoint.address
        try:
            ssl_stream = await tls_connect(
                stream,
                self.tls_contexts[endpoint.host],
                endpoint.host,
                peer,
                verdict_wait=verdict_wait,
            )
        except HandshakeError as exc:
            self.tls_failed(exc)
            raise
        self.tls_peers.saw(ssl_stream.getpeercert(binary_form=True), peer)
        return as_byte_stream(ssl_stream)

    def tls_failed(self, error: HandshakeError) -> HandshakeError:
        """Count a failed handshake with a target; returns ``error``, to raise."""
        count_failure(self.counters, error.failure)
        return error

    async def deliver(self, batches: list[Batch]) -> None:
        """Write ``batches``; return only once they are safe. Raise to retry."""
        raise NotImplementedError

    async def reset(self) -> None:
        """Drop whatever connection state a failed delivery left behind."""

    # The window: what the loop calls around each delivery.

    def written(self, batches: list[Batch], now: float) -> None:
        """``batches`` were just delivered: put them in flight (by default, safe)."""
        self.window.written(batches, now, None)

    def confirm(self, now: float) -> None:
        """Ack what became safe (the loop calls this before taking batches)."""
        self.window.confirm()

    async def aclose(self) -> None:
        await self.reset()

    async def hand_over(self, timeout: float) -> None:
        """A reload: take no more batches, and wait up to ``timeout`` until what is
        in flight is safe (acked from the spool); then cancel :meth:`run`, which
        ends as at a stop. What is still in flight then stays queued: the next
        output on this spool writes it again (at-least-once, as after a lost
        connection)."""
        self.handing_over = True
        self.spool.interrupt_wait()  # the loop may be waiting for batches
        with trio.move_on_after(timeout):
            await self._handed_over.wait()

    async def run(self) -> None:
        """Deliver until cancelled.

        Background work an output needs (a connect in progress, a reader of
        acknowledgements) runs in ``self._nursery``. At the end it is stopped
        first, then :meth:`aclose` closes what is open, in order.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._deliver_forever()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def _deliver_forever(self) -> None:
        timer = Timer()  # the coalescing wait: see relay/service/timer.py
        try:
            await self._deliver_with(timer)
        finally:
            timer.close()

    async def _deliver_with(self, timer: Timer) -> None:
        backoff = Backoff(maximum=self.config.retry_max)
        spool = self.spool
        window = self.window
        last_write = -float("inf")
        turn = False  # delivered without yielding: yield before the next take
        while True:
            self.confirm(trio.current_time())
            if self.handing_over:
                await self._wait_handed_over()
                continue
            skip = window.take()
            if turn and spool.ready(skip):
                # Busy: let the other tasks run. Idle, wait_batches below
                # waits, and that is the turn: at a trickle, one task step
                # fewer a write.
                await trio.lowlevel.checkpoint()
            turn = False
            batches = []
            if skip:
                with trio.move_on_after(CONFIRM_POLL):
                    batches = await spool.wait_batches(SEND_BYTES, skip=skip)
            else:
                batches = await spool.wait_batches(SEND_BYTES)
            if not batches or window.moved():
                continue  # look again whether the window became safe, or take again
            self.yielded = False
            if batches[0].nbytes < COALESCE_BYTES and len(batches) < 256:
                now = trio.current_time()
                if now - last_write < COALESCE_DELAY and _total(batches) < COALESCE_BYTES:
                    await timer.sleep(last_write + COALESCE_DELAY - now)  # see COALESCE_DELAY
                    if window.moved():
                        continue
                    batches = spool.batches_nowait(SEND_BYTES, skip)
                    if not batches:
                        continue
                    self.yielded = True
            last_write = trio.current_time()
            try:
                await self.deliver(batches)
            except WindowLost:
                continue
            except RETRYABLE as exc:
                backoff = backoff.increment()
                delay = backoff.delay(random.random())
                self._failed(exc, delay)
                with trio.CancelScope(shield=True):
                    await self.reset()
                await trio.sleep(delay)
                continue
            if backoff.failures:
                log.warning(
                    "output %s: delivering again after %d failed attempts",
                    self.name,
                    backoff.failures,
                )
                backoff = backoff.reset()
                self.last_error = ""
            self.written(batches, trio.current_time())
            turn = not self.yielded

    async def _wait_handed_over(self) -> None:
        """Handing over: until nothing is in flight (then until cancelled)."""
        if not self.window.batches:
            self._handed_over.set()
            await trio.sleep_forever()
        await trio.sleep(CONFIRM_POLL)

    def _failed(self, exc: BaseException, delay: float) -> None:
        self.counters.add("failures")
        reason = describe(exc)
        queued = len(self.spool)
        if reason != self.last_error:
            if not self.last_error:
                self.down_since = time.time()
            log.warning(
                "output %s: %s; %d messages queued, retrying in %.1f s",
                self.name,
                reason,
                queued,
                delay,
            )
            self.last_error = reason
        else:
            log.debug("output %s: %s; retrying in %.1f s", self.name, reason, delay)


def report_targets(name: str, events: list[Event], targets: int) -> None:
    """One line for each change in output ``name``'s targets (of ``targets``):
    a lone target's down and up are the output's own lines (_failed and the
    "delivering again" line), not these."""
    several = targets > 1
    for event in events:
        if isinstance(event, TargetDown) and several:
            log.warning("output %s: target %s down (%s)", name, event.endpoint.url, event.reason)
        elif isinstance(event, TargetUp) and several:
            log.warning("output %s: target %s up", name, event.endpoint.url)
        elif isinstance(event, FailedOver):
            log.warning("output %s: failing over from %s to %s", name, event.old.url, event.new.url)
        elif isinstance(event, FailedBack):
            log.warning("output %s: back on %s", name, event.new.url)


def _total(batches: list[Batch]) -> int:
    total = 0
    for batch in batches:
        total += batch.nbytes
    return total


def describe(exc: BaseException) -> str:
    """One line for an OS or trio error, without a traceback."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
        return os.strerror(cause.errno)
    if isinstance(cause, OSError) and cause.strerror:  # e.g. resolver errors
        return cause.strerror
    if isinstance(cause, OSError) and isinstance(cause.__cause__, BaseExceptionGroup):
        # trio.open_tcp_stream: "all attempts to connect to H:P failed", the
        # reasons in the group; the first is what an operator needs.
        inner = _first_leaf(cause.__cause__)
        target = str(cause).removeprefix("all attempts to connect to ").removesuffix(" failed")
        return f"cannot connect to {target}: {describe(inner)}"
    return str(cause or exc) or type(exc).__name__


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
