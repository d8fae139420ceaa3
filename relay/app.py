"""The relay's lifecycle: start, serve, stop.

Start: open every output and bind every input before serving anything, so a
busy port or a missing directory ends the start with one clear line and
nothing half-running.

Stop (SIGTERM or SIGINT): stop accepting, close the inputs, then give the
outputs up to ``stop_timeout`` seconds to deliver what is queued. A second
signal cuts that wait short. Whatever could not be delivered in time is
counted and logged by output (saving it to disk for the next start comes with
the disk spool).

SIGHUP reopens file outputs (logrotate).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator

import trio

from relay import stats
from relay.config import Config, InputConfig, OutputConfig
from relay.inputs import datagram, tcp
from relay.outputs import base
from relay.outputs.base import Output
from relay.outputs.file import FileOutput
from relay.outputs.tcp import TcpOutput
from relay.outputs.udp import UdpOutput
from relay.routing import Route, Router
from relay.spool.memory import MemorySpool

log = logging.getLogger("relay")

_OUTPUTS: dict[str, type[Output]] = {"tcp": TcpOutput, "udp": UdpOutput, "file": FileOutput}


class Relay:
    """Inputs, router and outputs built from one config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = stats.Registry()
        self.outputs = [self._output(o) for o in config.outputs]
        self.router = Router([Route(o.spool, o.counters) for o in self.outputs])
        self.inputs: list[datagram.DatagramInput | tcp.TcpInput] = []

    def _output(self, config: OutputConfig) -> Output:
        spool = MemorySpool(
            max_messages=config.queue_max_messages, max_bytes=config.queue_max_bytes
        )
        counters = self.stats.counters("output", config.name, base.COUNTERS)
        return _OUTPUTS[config.endpoint.scheme](config, spool, counters)

    async def open(self) -> None:
        """Open outputs and bind inputs; StartupError on the first that fails."""
        try:
            for output in self.outputs:
                await output.open()
            for config in self.config.inputs:
                self.inputs.append(await self._open_input(config))
        except BaseException:
            await self.aclose_inputs()
            raise

    async def _open_input(self, config: InputConfig) -> datagram.DatagramInput | tcp.TcpInput:
        if config.endpoint.scheme == "tcp":
            counters = self.stats.counters("input", config.name, tcp.COUNTERS)
            tcp_input = tcp.TcpInput(config, self.router, counters)
            await tcp_input.open()
            return tcp_input
        counters = self.stats.counters("input", config.name, datagram.COUNTERS)
        dgram = datagram.DatagramInput(config, self.router, counters)
        dgram.open()
        return dgram

    async def aclose_inputs(self) -> None:
        for item in self.inputs:
            if isinstance(item, tcp.TcpInput):
                for listener in item.listeners:
                    await listener.aclose()
            elif item.sock is not None:
                item.sock.close()

    def queued(self) -> int:
        return sum(len(o.spool) for o in self.outputs)

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until SIGTERM/SIGINT, then stop within ``stop_timeout``.

        Call :meth:`open` first. ``task_status`` gets the bound addresses.
        """
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                for output in self.outputs:
                    nursery.start_soon(output.run)
                async with trio.open_nursery() as inputs:
                    for item in self.inputs:
                        inputs.start_soon(item.serve)
                    addresses = [item.address for item in self.inputs]
                    log.info(
                        "relay: listening on %s; forwarding to %s",
                        ", ".join(addresses),
                        ", ".join(o.config.endpoint.url for o in self.outputs),
                    )
                    task_status.started(addresses)
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            self.reopen()
                            continue
                        log.info("relay: %s received; stopping", signal.Signals(signum).name)
                        break
                    inputs.cancel_scope.cancel()
                await self._drain(signals)
                nursery.cancel_scope.cancel()
        self._report()

    def reopen(self) -> None:
        log.info("relay: SIGHUP received; reopening file outputs")
        for output in self.outputs:
            if isinstance(output, FileOutput):
                output.reopen()

    async def _drain(self, signals: AsyncIterator[int]) -> None:
        queued = self.queued()
        if not queued:
            return
        timeout = self.config.stop_timeout
        log.info(
            "relay: delivering %d queued messages (up to %g s; "
            "send the signal again to stop now)",
            queued,
            timeout,
        )
        with trio.move_on_after(timeout) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wait_all_empty, nursery.cancel_scope)
                nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
        if scope.cancelled_caught:
            log.warning("relay: stop budget of %g s used up", timeout)

    async def _wait_all_empty(self, scope: trio.CancelScope) -> None:
        for output in self.outputs:
            await output.spool.wait_empty()
        scope.cancel()

    def _report(self) -> None:
        snapshot = self.stats.snapshot()
        for line in stats.summary(snapshot).splitlines():
            log.info("relay: %s", line)
        for output in self.outputs:
            left = len(output.spool)
            if left:
                log.error(
                    "output %s: %d messages could not be delivered before the stop "
                    "(last error: %s)",
                    output.name,
                    left,
                    output.last_error or "none",
                )


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        if signum != signal.SIGHUP:
            log.warning("relay: second %s; stopping now", signal.Signals(signum).name)
            scope.cancel()
            return


async def run(config: Config) -> int:
    """Open and run a relay; returns the exit status (0 after a clean stop)."""
    relay = Relay(config)
    await relay.open()
    await relay.run()
    # Messages still queued now are lost (the disk spool will keep them):
    # say so in the exit status, so that systemd shows the unit as failed.
    return 1 if relay.queued() else 0
