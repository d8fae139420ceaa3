"""The relay's lifecycle: start, serve, stop.

Start: lock the state directory, open every output's spool (checking and
adopting what an earlier run left there, to be delivered first), open every
output and bind every input before serving anything, so a busy port or an
unwritable directory ends the start with one clear line and nothing
half-running.

Stop (SIGTERM or SIGINT): stop accepting and close the inputs; give the
outputs that are delivering up to ``stop_timeout`` (less a reserve for
saving) to empty their spools, and stop at once those whose upstream is down;
then each spool writes what only memory holds to disk, to be replayed first
at the next start. A second signal cuts the wait short. Exit status 0 when
nothing was lost, 1 when a spool without disk could not keep what it held.
The spools are saved on every way out of :meth:`Relay.run`, an unexpected
error included, and one line says how many messages were kept and lost.

SIGHUP reopens file outputs (logrotate) and reloads every TLS certificate,
key and CA bundle: new connections use the new files, established ones keep
theirs; files that do not load leave the old ones in use, with one line why.
Certificates in use that expire within ``expiry_warning_days`` are named at
start and once a day.

Under systemd (``Type=notify``) the relay says READY=1 once every input is
bound, STOPPING=1 at the stop, a STATUS= summary, and WATCHDOG=1 pings when
asked (relay/service/notify.py). With ``user`` (``--user``) it drops root
after the start and before serving (relay/service/privileges.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from relay import stats
from relay.config import LOCAL_SCHEMES, Config, InputConfig, OutputConfig
from relay.errors import StartupError
from relay.inputs import datagram, limit, local, relp, tcp
from relay.observe import clients, control, metrics, status
from relay.outputs.delivery import Output
from relay.outputs.file import FileOutput
from relay.outputs.relp import RelpOutput
from relay.outputs.tcp import TcpOutput
from relay.outputs.udp import UdpOutput
from relay.policy.redact import Redactor
from relay.policy.stage import Stage
from relay.service import privileges
from relay.service.notify import Notifier
from relay.spool import spool as spools
from relay.spool.router import Route, Router
from relay.spool.spool import Spool, SpoolSettings
from relay.tls.context import ReloadableContext
from relay.tls.stream import COUNTERS as TLS_COUNTERS

log = logging.getLogger("relay")

Input = datagram.DatagramInput | tcp.TcpInput | local.LocalDatagramInput | local.LocalStreamInput

_OUTPUTS: dict[str, type[Output]] = {
    "tcp": TcpOutput,
    "udp": UdpOutput,
    "file": FileOutput,
    "relp": RelpOutput,
    "tls": TcpOutput,
    "relp+tls": RelpOutput,
}

# Of the stop budget, what is kept for writing memory to disk once delivery
# stops: writing a full 64 MiB memory part takes well under a second.
SAVE_RESERVE = 5.0
# At stop, how long inputs may go on reading what senders already wrote.
INPUT_GRACE = 2.0
# Certificates expire by the day: the expiry warnings are repeated this often.
EXPIRY_CHECK_INTERVAL = 86400.0


class Relay:
    """Inputs, router, spools and outputs built from one config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = stats.Registry()
        self.outputs = [self._output(o) for o in config.outputs]
        # Process names of local senders, shared by the filters and the inputs.
        self.process_names = local.ProcessNames()
        self.process_names.wanted = any(o.filter.processes for o in config.outputs)
        self.stage = Stage(
            [o.filter for o in config.outputs],
            [Redactor(o.redact) if o.redact else None for o in config.outputs],
            self.process_names,
        )
        if not self.stage.passthrough:  # no filter: no line about it at stop
            self.stats.adopt("router", "stage", self.stage.counts)
        for output, redactor in zip(config.outputs, self.stage.redactors, strict=True):
            if redactor is not None:
                self.stats.adopt("redaction", output.name, redactor.counts)
        self.router = Router([Route(o.spool, o.counters) for o in self.outputs], self.stage)
        self.inputs: list[Input] = []
        self._lock: int | None = None
        self.lost = 0  # messages neither delivered nor saved at stop
        self._saved = False
        # Connected now: before a drop of root (--user) could shut it out.
        self.notifier = Notifier.from_environ()
        self.stopping = False
        self.started = time.time()
        self.control: control.ControlServer | None = None
        self.metrics: metrics.MetricsServer | None = None

    def _output(self, config: OutputConfig) -> Output:
        settings = SpoolSettings(
            max_messages=config.queue_max_messages,
            max_bytes=config.queue_max_bytes,
            disk_max_bytes=config.disk_max_bytes,
            disk_reserve=config.disk_reserve,
            on_full=config.on_full,
            durability=config.durability,
            fsync_interval=config.fsync_interval,
        )
        directory = spool_directory(self.config.state_dir, config.name)
        spool = Spool(
            config.name,
            settings,
            self.stats.counters("spool", config.name, spools.COUNTERS),
            directory if config.disk_max_bytes else None,
        )
        kind = _OUTPUTS[config.endpoint.scheme]
        names = kind.COUNTERS + (TLS_COUNTERS if config.tls is not None else ())
        counters = self.stats.counters("output", config.name, names)
        return kind(config, spool, counters)

    async def open(self) -> None:
        """Lock state, open spools and outputs, bind inputs; StartupError on failure.

        A start that fails removes the directories it created (the state
        directory, its spool directories), so that it leaves nothing behind.
        """
        created = self._missing_directories()
        try:
            self._lock_state_dir()
            for output in self.outputs:
                try:
                    await output.spool.open()
                except OSError as exc:
                    raise StartupError(
                        f"output {output.name}: cannot use its spool in "
                        f"{output.spool.directory}: {exc.strerror or exc}"
                    ) from None
                await output.open()
            self._warn_orphan_spools()
            for config in self.config.inputs:
                self.inputs.append(await self._open_input(config))
            await self._open_observers()
            self.warn_expiry()
        except BaseException:
            await self.aclose_inputs()
            self._remove_created(created)
            raise

    def _missing_directories(self) -> list[Path]:
        """The directories a start would create: the state directory and its
        missing parents, ``spool/`` and each spool's, deepest first."""
        state = self.config.state_dir
        wanted = [*reversed(state.parents), state, state / "spool"]
        wanted += [o.spool.directory for o in self.outputs if o.spool.directory is not None]
        return [d for d in reversed(wanted) if not d.exists()]

    def _remove_created(self, created: list[Path]) -> None:
        """Undo what a failed start made: each directory in ``created`` (deepest
        first) that holds nothing but our lock file; never anything else."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        for directory in created:
            with contextlib.suppress(OSError):
                if directory == self.config.state_dir:
                    (directory / "lock").unlink(missing_ok=True)
                directory.rmdir()  # fails, and keeps it, unless it is empty

    def _lock_state_dir(self) -> None:
        state = self.config.state_dir
        try:
            state.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StartupError(f"cannot use state_dir {state}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(
                f"state_dir {state} is in use by another relay (its spools must have one "
                "owner); give each relay its own state_dir"
            ) from None
        self._lock = fd

    def _warn_orphan_spools(self) -> None:
        root = self.config.state_dir / "spool"
        known = {spool_directory(self.config.state_dir, o.name) for o in self.config.outputs}
        for directory in sorted(root.glob("*")) if root.is_dir() else []:
            if directory not in known and any(directory.glob("*.seg")):
                log.warning(
                    "relay: %s holds queued messages of an output that is not configured; "
                    "they stay there until an output of that name is configured again",
                    directory,
                )

    async def _open_input(self, config: InputConfig) -> Input:
        if config.endpoint.scheme in ("tcp", "relp", "tls", "relp+tls"):
            module = relp if config.endpoint.scheme.startswith("relp") else tcp
            names = module.COUNTERS + (TLS_COUNTERS if config.tls is not None else ())
            names += limit.COUNTERS if config.rate_limit is not None else ()
            counters = self.stats.counters("input", config.name, names)
            kind = relp.RelpInput if module is relp else tcp.TcpInput
            tcp_input = kind(config, self.router, counters)
            await tcp_input.open()
            return tcp_input
        limit_names = limit.COUNTERS if config.rate_limit is not None else ()
        if config.endpoint.scheme in LOCAL_SCHEMES:
            local_kind: type[local.LocalDatagramInput | local.LocalStreamInput] = (
                local.LocalStreamInput
                if config.endpoint.scheme == "unix+stream"
                else local.LocalDatagramInput
            )
            names = local_kind.counter_names + limit_names
            counters = self.stats.counters("input", config.name, names)
            creds_wanted = any(o.filter.by_creds for o in self.config.outputs)
            local_input = local_kind(
                config, self.router, counters, self.process_names, creds_wanted=creds_wanted
            )
            local_input.open()
            return local_input
        counters = self.stats.counters("input", config.name, datagram.COUNTERS + limit_names)
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
        await self._aclose_observers()  # listeners too: the control socket, metrics

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
            try:
                await self._serve(signals, task_status)
            except Exception as exc:
                log.error("relay: stopping on an unexpected error (a bug in relay): %s", _why(exc))
                raise
            finally:
                # Every way out: a signal, an error anywhere, a cancellation.
                # Still inside the signal receiver: another SIGTERM now must not
                # kill the process halfway through saving.
                self._save()
                self._report()

    async def _serve(
        self, signals: AsyncIterator[int], task_status: trio.TaskStatus[list[str]]
    ) -> None:
        """Serve until a stop signal, then stop the inputs and drain the outputs."""
        async with trio.open_nursery() as nursery:
            for output in self.outputs:
                nursery.start_soon(output.run)
                nursery.start_soon(output.spool.run)
            if self.tls_contexts():
                nursery.start_soon(self._warn_expiry_daily)
            for item in self.inputs:
                if item.limit is not None:
                    nursery.start_soon(item.limit.run)
            self._serve_observers(nursery)
            async with trio.open_nursery() as inputs:
                for item in self.inputs:
                    inputs.start_soon(item.serve)
                addresses = [item.address for item in self.inputs]
                log.info(
                    "relay: listening on %s; forwarding to %s",
                    ", ".join(addresses),
                    ", ".join(
                        " or ".join(t.url for t in o.config.all_targets) for o in self.outputs
                    ),
                )
                task_status.started(addresses)
                self._notify_ready(nursery)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        self.reopen()
                        self.reload_tls()
                        continue
                    log.info("relay: %s received; stopping", signal.Signals(signum).name)
                    break
                self._notify_stopping(signum)
                # Stop accepting; let connections hand over what is already
                # in our kernel's buffers, within a short grace.
                for item in self.inputs:
                    await item.stop()
                grace = min(INPUT_GRACE, self.config.stop_timeout / 4)
                inputs.cancel_scope.deadline = trio.current_time() + grace
            await self._drain(signals)
            nursery.cancel_scope.cancel()

    def _notify_ready(self, nursery: trio.Nursery) -> None:
        """READY=1 to systemd (every input is bound and listening), then the
        watchdog pings and STATUS= updates for as long as the relay serves."""
        self.notifier.ready(self.summary())
        nursery.start_soon(self.notifier.keep_alive, self.summary)

    def _notify_stopping(self, signum: int) -> None:
        self.stopping = True
        self.notifier.stopping(f"{signal.Signals(signum).name} received; {self.summary()}")

    def summary(self) -> str:
        """One line for ``systemctl status``: inputs, outputs up and down, queued."""
        down = [f"{o.name}: {o.last_error}" for o in self.outputs if o.last_error]
        outputs = f"{len(self.outputs) - len(down)} of {len(self.outputs)} outputs up"
        if down:
            outputs += f" (down: {'; '.join(down)})"
        inputs = "stopping" if self.stopping else f"{len(self.inputs)} inputs listening"
        return f"{inputs}; {outputs}; {self.queued():,} messages queued"

    async def become(self, identity: privileges.Identity) -> None:
        """After :meth:`open`, before :meth:`run`: give the state directory to
        the user and drop root (StartupError, inputs closed, if it fails)."""
        try:
            privileges.give_state_dir(self.config.state_dir, identity)
            privileges.drop(identity)
            privileges.check_state_dir(self.config.state_dir, identity)
        except BaseException:
            await self.aclose_inputs()
            raise
        log.info(
            "relay: running as user %s (uid %d), group %s (gid %d)",
            identity.user,
            identity.uid,
            identity.group,
            identity.gid,
        )

    # -- seeing into the relay: control socket, metrics, stats line ----------

    def status(self) -> dict[str, Any]:
        """The status document (relay/status.py), as ``relay stats`` shows it."""
        return status.document(self, self.started)

    async def _open_observers(self) -> None:
        """Bind the control socket and the metrics listener (StartupError)."""
        counters = self.stats.counters("control", control.SOCKET_NAME, clients.COUNTERS)
        self.control = control.ControlServer(
            control.socket_path(self.config.state_dir),
            {"stats": self.status},
            counters,
            group=self.config.control_group,
        )
        await self.control.open()
        if self.config.metrics is not None:
            host, port = self.config.metrics
            counters = self.stats.counters("metrics", f"{host}:{port}", clients.COUNTERS)
            self.metrics = metrics.MetricsServer(host, port, self.status, counters)
            await self.metrics.open()

    async def _aclose_observers(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            await self.metrics.aclose()

    def _serve_observers(self, nursery: trio.Nursery) -> None:
        """Serve them until the end of the stop (``relay stats`` works while
        a stop delivers what is queued)."""
        if self.control is not None:
            nursery.start_soon(self.control.serve)
        if self.metrics is not None:
            log.info("relay: metrics on %s", self.metrics.url)
            nursery.start_soon(self.metrics.serve)
        if self.config.stats_interval:
            nursery.start_soon(
                status.log_periodically, self, self.started, self.config.stats_interval
            )

    def reopen(self) -> None:
        log.info("relay: SIGHUP received; reopening file outputs")
        for output in self.outputs:
            if isinstance(output, FileOutput):
                output.reopen()

    def tls_contexts(self) -> list[tuple[str, ReloadableContext]]:
        """Every TLS context in use, with what it belongs to (for log lines)."""
        found: list[tuple[str, ReloadableContext]] = []
        for item in self.inputs:
            if isinstance(item, tcp.TcpInput) and item.tls is not None:
                found.append((f"input {item.config.name}", item.tls.context))
        for output in self.outputs:
            for host, context in output.tls_contexts.items():
                found.append((f"output {output.name} ({host})", context))
        return found

    def warn_expiry(self, now: datetime | None = None) -> list[str]:
        """Log one line per certificate in use that expires soon (each file once)."""
        now = now or datetime.now(UTC)
        lines: list[str] = []
        for _, context in self.tls_contexts():
            for line in context.expiry_warnings(now):
                if line not in lines:
                    lines.append(line)
        for line in lines:
            log.warning("relay: %s", line)
        return lines

    async def _warn_expiry_daily(self) -> None:
        while True:
            await trio.sleep(EXPIRY_CHECK_INTERVAL)
            self.warn_expiry()

    def reload_tls(self) -> None:
        """Reload every TLS profile's files; a failure keeps the old context (one line)."""
        contexts = self.tls_contexts()
        if not contexts:
            return
        failed = 0
        for what, context in contexts:
            reason = context.reload()
            if reason is not None:
                failed += 1
                log.error("relay: %s: TLS reload failed: %s", what, reason)
        if failed < len(contexts):
            log.info(
                "relay: TLS certificates reloaded for %d of %d inputs and targets; new "
                "connections use them",
                len(contexts) - failed,
                len(contexts),
            )
        self.warn_expiry()

    async def _drain(self, signals: AsyncIterator[int]) -> None:
        """Let outputs that are delivering empty their spools, within the budget."""
        queued = self.queued()
        if not queued:
            return
        timeout = self.config.stop_timeout
        budget = timeout - min(SAVE_RESERVE, timeout / 4)
        log.info(
            "relay: delivering %d queued messages (up to %g s; send the signal again to stop now)",
            queued,
            budget,
        )
        with trio.move_on_after(budget) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wait_drained, nursery.cancel_scope)
                nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
        if scope.cancelled_caught:
            log.warning("relay: stop budget of %g s for delivering used up", budget)

    async def _wait_drained(self, scope: trio.CancelScope) -> None:
        """Until every output has emptied its spool or is failing to deliver."""
        while any(len(o.spool) and not o.last_error for o in self.outputs):
            with trio.move_on_after(0.05):  # also notice an output starting to fail
                await self.outputs[0].spool.wait_changed()
        scope.cancel()

    def _save(self) -> None:
        """Write what each spool holds in memory to disk (once), and say what
        was kept and what was lost in one line."""
        if self._saved:
            return
        self._saved = True
        kept = 0
        for output in self.outputs:
            left = len(output.spool)
            if not left:
                continue
            try:
                lost = output.spool.save()
            except Exception:  # a bug: the other spools must still be saved
                log.exception("output %s: saving its spool failed", output.name)
                lost = output.spool.statistics().memory_messages
            self.lost += lost
            kept += left - lost
            if lost:
                log.error(
                    "output %s: %d messages were lost at the stop: not delivered (last error: "
                    "%s) and not saved (%s)",
                    output.name,
                    lost,
                    output.last_error or "none",
                    "no disk: disk_max_bytes = 0"
                    if output.spool.directory is None
                    else "the disk failed",
                )
            else:
                log.info(
                    "output %s: %d messages not delivered yet are kept in %s and will be "
                    "delivered first at the next start",
                    output.name,
                    left,
                    output.spool.directory,
                )
        if kept or self.lost:
            log.log(
                logging.ERROR if self.lost else logging.INFO,
                "relay: stopped with %d messages kept in the spools for the next start, %d lost",
                kept,
                self.lost,
            )

    def _report(self) -> None:
        for item in self.inputs:
            if item.limit is not None:
                item.limit.close()
        snapshot = self.stats.snapshot()
        for line in stats.summary(snapshot).splitlines():
            log.info("relay: %s", line)


def _why(exc: BaseException) -> str:
    """``Type: message`` of each error inside ``exc`` (trio groups them)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_why(sub) for sub in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def spool_directory(state_dir: Path, output_name: str) -> Path:
    """Where an output's spool lives: a file name made from the output's name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", output_name)
    return state_dir / "spool" / safe


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        if signum != signal.SIGHUP:
            log.warning("relay: second %s; stopping now", signal.Signals(signum).name)
            scope.cancel()
            return


async def run(config: Config) -> int:
    """Open and run a relay; returns the exit status (0 unless messages were lost)."""
    identity = None
    if config.user:  # checked before anything is bound: a mistake costs nothing
        identity = privileges.resolve(config.user, config.group)
        privileges.check_root(identity)
    relay = Relay(config)
    try:
        await relay.open()
        if identity is not None:
            await relay.become(identity)
        await relay.run()
    finally:
        relay.notifier.close()
    return 1 if relay.lost else 0
