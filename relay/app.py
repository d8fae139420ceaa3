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

SIGHUP (``relay reload``) reopens file outputs (logrotate) and reloads every
TLS certificate, key and CA bundle: new connections use the new files,
established ones keep theirs; files that do not load leave the old ones in
use, with one line why. Then it reads the config again as it was read for
the start (relay/policy/reload.py says what changed). An invalid config
changes nothing (one line per mistake, as ``relay check`` prints them).
Everything new that can fail is built first (new outputs and their spools,
new listeners): if any of it fails, one line each and nothing changes. Then
the router and the processing stage switch to the new outputs between two
batches; unchanged inputs and outputs are not touched; a changed output
finishes what it has in flight (HAND_OVER_TIMEOUT at most) and the output
built from the new config takes over its spool, queue and all; a removed one
does the same, then its spool is saved to disk as at a stop, and the log
names the directory (a spool without disk is delivered until empty
instead); removed and changed inputs stop as at a stop (their connections
hand over what they read, within INPUT_GRACE), new ones are served.
Certificates in use that expire within ``expiry_warning_days`` are named at
start and once a day.

Under systemd (``Type=notify``) the relay says READY=1 once every input is
bound, STOPPING=1 at the stop, a STATUS= summary, and WATCHDOG=1 pings when
asked (relay/service/notify.py). With ``user`` (``--user``) it drops root
after the start and before serving (relay/service/privileges.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from relay import stats
from relay.config import LOCAL_SCHEMES, Config, InputConfig, OutputConfig
from relay.errors import ConfigErrors, StartupError
from relay.inputs import datagram, limit, local, proxied, relp, tcp
from relay.observe import control, metrics, serving, status
from relay.outputs.delivery import Output
from relay.outputs.file import FileOutput
from relay.outputs.http import HttpOutput
from relay.outputs.relp import RelpOutput
from relay.outputs.tcp import TcpOutput
from relay.outputs.udp import UdpOutput
from relay.policy import reload as reload_plan
from relay.policy.redact import Redactor
from relay.policy.stage import Stage
from relay.service import privileges
from relay.service.notify import Notifier
from relay.spool import spool as spools
from relay.spool.router import Route, Router
from relay.spool.spool import Durability, Spool, SpoolSettings
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
    "http": HttpOutput,
    "https": HttpOutput,
}

# Of the stop budget, what is kept for writing memory to disk once delivery
# stops: writing a full 64 MiB memory part takes well under a second.
SAVE_RESERVE = 5.0
# At stop, how long inputs may go on reading what senders already wrote.
INPUT_GRACE = 2.0
# Certificates expire by the day: the expiry warnings are repeated this often.
EXPIRY_CHECK_INTERVAL = 86400.0
# How long a reload lets a changed or removed output get what it has in
# flight confirmed before its spool is handed on: plain TCP confirms a write
# CONFIRM_AGE (1 s) after the peer's kernel has it, RELP at each answer. What
# is not confirmed by then is written again by the next output (at-least-once).
HAND_OVER_TIMEOUT = 5.0


class _Task:
    """One component's task (an output's delivery, an input's serving), which a
    reload may stop on its own."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(self, function: Callable[[], Awaitable[Any]]) -> None:
        try:
            with self.scope:
                await function()
        finally:
            self.done.set()

    async def cancel(self) -> None:
        self.scope.cancel()
        await self.done.wait()


class _Built:
    """What a reload built before changing anything: outputs and inputs by name."""

    def __init__(self) -> None:
        self.outputs: dict[str, Output] = {}
        self.inputs: dict[str, Input] = {}


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
        # Set by run(): reads the config again as the relay was started (SIGHUP).
        self.reread: Callable[[], Config] | None = None
        self._tasks: dict[object, _Task] = {}  # each component's task, for a reload to stop
        self._nursery: trio.Nursery | None = None  # outputs, spools, rate limits
        self._inputs_nursery: trio.Nursery | None = None
        # A worker process ([relay] workers): the parent's pid, watched.
        self.parent: int | None = None

    def _output(self, config: OutputConfig) -> Output:
        settings = spool_settings(config)
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
        self._lock = lock_state_dir(self.config.state_dir)

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
        if config.endpoint.scheme in ("http", "https"):
            # Imported here: h11 is needed only by a relay with an HTTP input.
            from relay.inputs import http

            names = http.COUNTERS + (TLS_COUNTERS if config.tls is not None else ())
            names += limit.COUNTERS if config.rate_limit is not None else ()
            http_input = http.HttpInput(
                config, self.router, self.stats.counters("input", config.name, names)
            )
            await http_input.open()
            return http_input
        if config.endpoint.scheme in ("tcp", "relp", "tls", "relp+tls"):
            module = relp if config.endpoint.scheme.startswith("relp") else tcp
            names = module.COUNTERS + (TLS_COUNTERS if config.tls is not None else ())
            names += limit.COUNTERS if config.rate_limit is not None else ()
            names += proxied.COUNTERS if config.proxy_protocol else ()
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
            creds_wanted = any(o.filter.by_creds or o.writes_json for o in self.config.outputs)
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
            self._nursery = nursery
            for output in self.outputs:
                self._start_output(output)
            # Always: a reload may add the first TLS input or target.
            nursery.start_soon(self._warn_expiry_daily)
            for item in self.inputs:
                if item.limit is not None:
                    # Keyed, as the inputs a reload adds: removing the input stops it.
                    self._start(nursery, item.limit, item.limit.run)
            self._serve_observers(nursery)
            async with trio.open_nursery() as inputs:
                self._inputs_nursery = inputs
                for item in self.inputs:
                    self._start(inputs, item, item.serve)
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
                if self.parent is not None:
                    nursery.start_soon(_watch_parent, self.parent)
                    if not self.inputs:  # a worker that only delivers an old spool
                        nursery.start_soon(self._stop_when_delivered)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self.reload()
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

    async def _stop_when_delivered(self) -> None:
        """A worker without inputs delivers what an earlier run with more
        workers left in its spools (relay/workers.py), then stops."""
        while self.queued():
            with trio.move_on_after(0.5):
                await self.outputs[0].spool.wait_changed()
        log.info("relay: the spools left by an earlier run are delivered; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

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
        self.control, self.metrics = await serving.open_observers(
            self.config, self.config.state_dir, self.stats, self.status
        )

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

    # -- reload: SIGHUP reads the config again -------------------------------

    def _start(
        self, nursery: trio.Nursery, key: object, function: Callable[[], Awaitable[Any]]
    ) -> None:
        """Run ``function`` in ``nursery`` as ``key``'s task (a reload may stop it)."""
        task = self._tasks[key] = _Task()
        nursery.start_soon(task.run, function)

    def _start_output(self, output: Output) -> None:
        assert self._nursery is not None
        self._start(self._nursery, output, output.run)
        self._start(self._nursery, output.spool, output.spool.run)

    async def _stop_task(self, key: object) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            await task.cancel()

    async def reload(self) -> None:
        """SIGHUP: reopen file outputs, reload certificates, then read the config
        file again and apply what changed (see the module docstring). systemd
        hears RELOADING=1, then READY=1 whatever the outcome."""
        self.notifier.reloading()
        try:
            self.reopen()
            self.reload_tls()
            await self._reload_config()
        finally:
            self.notifier.ready(self.summary())

    async def _reload_config(self) -> None:
        if self.reread is None:
            return
        source = self.config.source
        try:
            new = self.reread()
        except ConfigErrors as exc:
            for error in exc.errors:  # the lines `relay check` prints
                log.error("relay: error: %s", error)
            log.error(
                "relay: reload refused: %s has %d %s (above); still running on the "
                "config as it was",
                source,
                len(exc.errors),
                "mistake" if len(exc.errors) == 1 else "mistakes",
            )
            return
        plan = reload_plan.plan(self.config, new)
        for line in plan.restart:
            log.warning("relay: reload: %s", line)
        if plan.any:
            try:
                built = await self._build(plan)
            except StartupError as exc:
                for line in str(exc).splitlines():
                    log.error("relay: reload: %s", line)
                log.error(
                    "relay: reload refused: nothing was changed; still running on the "
                    "config as it was"
                )
                return
            await self._apply(plan, built)
        self.config = plan.config
        logging.getLogger("relay").setLevel(plan.config.log_level.upper())
        log.info("relay: reloaded %s: %s", source, plan.describe())

    async def _build(self, plan: reload_plan.ReloadPlan) -> _Built:
        """Everything new that can fail, before anything running is touched:
        new outputs (their spools opened, TLS files loaded), rebuilt outputs
        on the spools they keep, and new listeners. StartupError (one line per
        failure) undoes what was built: the reload is all or nothing."""
        built = _Built()
        problems: list[str] = []
        running = {o.name: o for o in self.outputs}
        for config in plan.outputs.added:
            output = self._output(config)
            built.outputs[config.name] = output
            try:
                await output.spool.open()
                await output.open()
            except OSError as exc:
                problems.append(
                    f"output {config.name}: cannot use its spool in {output.spool.directory}: "
                    f"{exc.strerror or exc}"
                )
            except StartupError as exc:
                problems.append(str(exc))
        for old, config in plan.outputs.changed:
            output = self._rebuilt_output(config, running[old.name])
            built.outputs[config.name] = output
            try:
                await output.open()
            except StartupError as exc:
                problems.append(str(exc))
        # A changed input on the same address can only bind once the old one
        # is closed (_apply); every other new listener is bound now.
        endpoints = {i.name: i.endpoint for i in self.config.inputs}
        for input_config in (*plan.inputs.added, *(new for _, new in plan.inputs.changed)):
            if endpoints.get(input_config.name) == input_config.endpoint:
                continue
            try:
                built.inputs[input_config.name] = await self._open_input(input_config)
            except StartupError as exc:
                problems.append(str(exc))
        if problems:
            for item in built.inputs.values():
                await _close_input(item)
            for output in built.outputs.values():
                if output.name not in running:
                    output.spool.save()  # what it replayed stays on disk
            for name in built.outputs:
                self.stats.forget("output", name)
                self.stats.forget("spool", name)
            for name in built.inputs:
                self.stats.forget("input", name)
            self._restore_counters()
            raise StartupError("\n".join(problems))
        return built

    def _rebuilt_output(self, config: OutputConfig, old: Output) -> Output:
        """The output for ``config`` on ``old``'s spool (its counters take up
        ``old``'s once ``old`` has stopped: :meth:`_hand_over`)."""
        kind = _OUTPUTS[config.endpoint.scheme]
        names = kind.COUNTERS + (TLS_COUNTERS if config.tls is not None else ())
        return kind(config, old.spool, stats.Counters("output", config.name, names))

    def _restore_counters(self) -> None:
        """The registry as the running components have it (a refused reload)."""
        for output in self.outputs:
            self.stats.register(output.counters)
            self.stats.register(output.spool.counters)
        for item in self.inputs:
            self.stats.register(item.counters)

    async def _apply(self, plan: reload_plan.ReloadPlan, built: _Built) -> None:
        """Route to the new outputs, hand the changed and removed outputs' spools
        over, and swap the inputs (see the module docstring)."""
        running = {o.name: o for o in self.outputs}
        routes = {route.spool: route for route in self.router.routes}
        outputs: list[Output] = []
        for config in plan.config.outputs:
            output = built.outputs.get(config.name) or running[config.name]
            outputs.append(output)
            self.stats.register(output.counters)
            if output.spool in routes:
                routes[output.spool].counters = output.counters
        removed = [running[c.name] for c in plan.outputs.removed]
        leaving = [o for o in removed if o.spool.directory is None]  # drained, not saved
        for old, config in plan.outputs.changed:
            self._reconfigure_spool(running[old.name].spool, config)
        self.stage = self._stage(outputs, running)
        self.router.swap(
            [routes.get(o.spool) or Route(o.spool, o.counters) for o in outputs],
            self.stage,
            removed=[routes[o.spool] for o in removed],
        )
        self.outputs = outputs + leaving
        for config in plan.outputs.added:
            self._start_output(built.outputs[config.name])
        async with trio.open_nursery() as nursery:
            for old, config in plan.outputs.changed:
                nursery.start_soon(self._hand_over, running[old.name], built.outputs[config.name])
            for output in removed:
                nursery.start_soon(self._remove_output, output)
            nursery.start_soon(self._swap_inputs, plan, built)

    def _reconfigure_spool(self, spool: Spool, config: OutputConfig) -> None:
        settings = spool_settings(config)
        if spool.directory is None and settings.disk_max_bytes:
            log.warning(
                "relay: reload: output %s: a spool on disk (disk_max_bytes) needs a restart: "
                "its spool stays in memory until then",
                config.name,
            )
            settings = dataclasses.replace(
                settings, disk_max_bytes=0, durability=Durability.MEMORY, fsync_interval=0.0
            )
        spool.reconfigure(settings)

    def _stage(self, outputs: list[Output], running: dict[str, Output]) -> Stage:
        """The processing stage for ``outputs``: unchanged outputs keep their
        redactors (and counts), and the unrouted count goes on."""
        redactors = dict(zip([o.name for o in self.outputs], self.stage.redactors, strict=False))
        chosen: list[Redactor | None] = []
        for output in outputs:
            if running.get(output.name) is output:  # unchanged
                chosen.append(redactors.get(output.name))
            else:
                chosen.append(Redactor(output.config.redact) if output.config.redact else None)
        stage = Stage([o.config.filter for o in outputs], chosen)
        stage.counts["unrouted"] += self.stage.counts["unrouted"]
        if not stage.passthrough:
            self.stats.adopt("router", "stage", stage.counts)
        for output, redactor in zip(outputs, chosen, strict=True):
            if redactor is not None:
                self.stats.adopt("redaction", output.name, redactor.counts)
        return stage

    async def _hand_over(self, old: Output, new: Output) -> None:
        """A changed output: the old one stops once what it has in flight is
        safe (or after HAND_OVER_TIMEOUT); the new one takes over its spool."""
        await old.hand_over(0.0 if old.last_error else HAND_OVER_TIMEOUT)
        unconfirmed = old.window.messages
        await self._stop_task(old)
        # The counts go on: what the old one counted, to its end, and what
        # was queued for the new one since the swap.
        kept = new.counters.snapshot()
        for name, value in old.counters.snapshot().items():
            if name in kept:
                new.counters.add(name, value)
        if unconfirmed:  # only if the old one could not finish
            log.warning(
                "output %s: %d messages written before the reload were not confirmed; "
                "they are written again (the collector may see them twice)",
                old.name,
                unconfirmed,
            )
        self._start(self._nursery_or_fail(), new, new.run)

    async def _remove_output(self, output: Output) -> None:
        """A removed output: stop it once what it has in flight is safe, then
        save its spool to disk as a stop does (named in the log, to be
        delivered if an output of that name is configured again). A spool
        without disk is delivered until it is empty, then the output stops."""
        if output.spool.directory is None:
            log.info(
                "relay: reload: output %s is removed; it delivers its %d queued messages "
                "(its spool has no disk to keep them) and then stops",
                output.name,
                len(output.spool),
            )
            self._nursery_or_fail().start_soon(self._drain_removed, output)
            return
        await output.hand_over(0.0 if output.last_error else HAND_OVER_TIMEOUT)
        await self._stop_task(output)
        await self._stop_task(output.spool)
        left = len(output.spool)
        lost = output.spool.save() if left else 0
        self.lost += lost
        if lost:
            log.error(
                "output %s: removed; %d queued messages could not be saved", output.name, lost
            )
        log.info(
            "relay: reload: output %s is removed; %d messages it had not delivered are kept "
            "in %s, to be delivered when an output named %s is configured again",
            output.name,
            left - lost,
            output.spool.directory,
            output.name,
        )

    async def _drain_removed(self, output: Output) -> None:
        await output.spool.wait_empty()
        await self._stop_task(output)
        await self._stop_task(output.spool)
        if output in self.outputs:
            self.outputs.remove(output)
        log.info("relay: output %s delivered what it held and stopped", output.name)

    async def _swap_inputs(self, plan: reload_plan.ReloadPlan, built: _Built) -> None:
        """Stop the removed and changed inputs (their connections hand over what
        they already read, within INPUT_GRACE), then serve the new ones."""
        running = {i.config.name: i for i in self.inputs}
        leaving = [running[c.name] for c in plan.inputs.removed]
        leaving += [running[old.name] for old, _ in plan.inputs.changed]
        grace = min(INPUT_GRACE, self.config.stop_timeout / 4)
        async with trio.open_nursery() as nursery:
            for item in leaving:
                nursery.start_soon(self._stop_input, item, grace)
        for _, config in plan.inputs.changed:
            if config.name not in built.inputs:  # the same address: bound now
                try:
                    built.inputs[config.name] = await self._open_input(config)
                except StartupError as exc:
                    log.error("relay: reload: %s; it stays closed until the next reload", exc)
        for item in leaving:
            del running[item.config.name]
        inputs = []
        for config in plan.config.inputs:
            found = built.inputs.get(config.name) or running.get(config.name)
            if found is None:  # could not bind again (logged above)
                continue
            item = found
            inputs.append(item)
            if config.name in built.inputs:
                assert self._inputs_nursery is not None
                self._start(self._inputs_nursery, item, item.serve)
                if item.limit is not None:
                    self._start(self._nursery_or_fail(), item.limit, item.limit.run)
        self.inputs = inputs

    async def _stop_input(self, item: Input, grace: float) -> None:
        await item.stop()
        task = self._tasks.get(item)
        if task is not None:
            with trio.move_on_after(grace):
                await task.done.wait()
        await self._stop_task(item)
        await self._stop_task(item.limit)
        if item.limit is not None:
            item.limit.close()
        await _close_input(item)
        log.info("relay: reload: input %s (%s) is closed", item.config.name, item.address)

    def _nursery_or_fail(self) -> trio.Nursery:
        assert self._nursery is not None, "reload() runs only while the relay serves"
        return self._nursery

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


def lock_state_dir(state: Path) -> int:
    """Create ``state`` if need be and hold its lock (an open fd) with our pid
    in it: `relay reload` signals this pid (relay/service/running.py).
    StartupError if another relay holds it."""
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
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def spool_settings(config: OutputConfig) -> SpoolSettings:
    return SpoolSettings(
        max_messages=config.queue_max_messages,
        max_bytes=config.queue_max_bytes,
        disk_max_bytes=config.disk_max_bytes,
        disk_reserve=config.disk_reserve,
        on_full=config.on_full,
        durability=config.durability,
        fsync_interval=config.fsync_interval,
    )


def spool_directory(state_dir: Path, output_name: str) -> Path:
    """Where an output's spool lives: a file name made from the output's name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", output_name)
    return state_dir / "spool" / safe


async def _close_input(item: Input) -> None:
    if isinstance(item, tcp.TcpInput):
        for listener in item.listeners:
            await listener.aclose()
    elif item.sock is not None:
        item.sock.close()


# How often a worker looks whether its parent is still there.
PARENT_CHECK_INTERVAL = 1.0


async def _watch_parent(parent: int) -> None:
    """A worker whose parent is gone (killed: it had no time to stop us) stops
    as at SIGTERM, saving its spools, rather than serve on unsupervised."""
    while os.getppid() == parent:
        await trio.sleep(PARENT_CHECK_INTERVAL)
    log.warning("relay: the parent process %d is gone; stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        if signum != signal.SIGHUP:
            log.warning("relay: second %s; stopping now", signal.Signals(signum).name)
            scope.cancel()
            return


async def run(
    config: Config, reread: Callable[[], Config] | None = None, *, parent: int | None = None
) -> int:
    """Open and run a relay; returns the exit status (0 unless messages were lost).

    ``reread`` reads the config again as it was read for the start (the file
    and the command line): SIGHUP applies what it returns, or logs its
    ConfigErrors and changes nothing. ``parent``: this is a worker process
    of that pid (relay/workers.py)."""
    identity = None
    if config.user:  # checked before anything is bound: a mistake costs nothing
        identity = privileges.resolve(config.user, config.group)
        privileges.check_root(identity)
    relay = Relay(config)
    relay.reread = reread
    relay.parent = parent
    try:
        await relay.open()
        if identity is not None:
            await relay.become(identity)
        await relay.run()
    finally:
        relay.notifier.close()
    return 1 if relay.lost else 0
