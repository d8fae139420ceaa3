"""Worker processes: ``[relay] workers = N`` runs N relays that share the inputs.

With N > 1, ``relay run`` becomes a parent that starts N workers and
supervises them. Each worker is ``relay run`` itself, started again with the
same command line and the hidden option ``--worker K``: it reads the same
config and runs :func:`worker_config` of it, a plain relay with

* every TCP, TLS, RELP and UDP input bound with SO_REUSEPORT: the kernel
  spreads connections (and datagrams) over the workers by a hash of the
  sender's address and port; unix sockets (one path, one owner) are bound
  by worker 0 only;
* its own state directory ``state_dir/worker-K``: its lock, its spools, its
  control socket. A worker that dies leaves its spool there, and the worker
  started in its place replays it first;
* no metrics listener: the parent serves ``[relay] metrics`` and
  ``state_dir/control.sock``, asking each worker and adding the answers up
  (relay/observe/fleet.py).

Why a new process (``sys.executable -m relay run ... --worker K``) rather
than fork or multiprocessing: a forked child would inherit the parent's
trio loop, threads and signal wakeup fd, which is not safe; multiprocessing's
spawn starts a fresh interpreter too, but adds its own pipes, pickling and
a resource tracker process, and a worker it started is not a ``relay run``
that an operator can recognise in ps or reproduce by hand. A re-exec is the
relay that the tests already prove, started N times.

The parent holds ``state_dir/lock`` (so ``relay reload`` signals it), keeps
root when started as root (with ``user``, each worker drops it after binding,
and a worker started again must bind the privileged ports again), and:

* starts the workers in their own session, so that a terminal's Ctrl-C
  reaches the parent only, which passes each signal on exactly once;
* tells systemd READY=1 once every worker said READY=1 to it (each worker's
  NOTIFY_SOCKET is an abstract socket of the parent's);
* restarts a worker that dies, after a back-off (RESTART_BACKOFF, reset
  once a worker ran STABLE_AFTER seconds); a worker that fails at the first
  start (a busy port, a bad certificate: its one line is in the log) stops
  the others and the parent exits 1;
* SIGHUP: passed to every worker (each reloads as a single relay does);
  SIGTERM, SIGINT: passed to every worker, which stops and saves its spool;
  a second one is passed on too (the workers stop delivering at once). The
  parent exits once all have, with status 1 if any lost messages.

A worker that finds its parent gone (killed) stops as at SIGTERM. A
``worker-K`` directory with K >= N holding spool segments (an earlier run
had more workers) gets a worker of its own without inputs, which delivers
what is there and exits; stopped before it is done, it saves what is left
as any worker does, and the next start runs it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from relay import __version__, app, stats
from relay.config import LOCAL_SCHEMES, Config
from relay.errors import ConfigErrors
from relay.observe import control, fleet, metrics, serving, status
from relay.policy.backoff import Backoff
from relay.service import privileges
from relay.service.notify import Notifier

log = logging.getLogger("relay")

# Between restarts of a worker that keeps dying: 0.5 s, doubling up to 30 s.
RESTART_BACKOFF = Backoff(initial=0.5, maximum=30.0)
# A worker that ran this long before it died is restarted without delay
# growing from earlier deaths.
STABLE_AFTER = 60.0
# How long the parent waits for one worker's stats (an idle or busy worker
# answers within milliseconds; a stuck one must not hold `relay stats`).
STATS_TIMEOUT = 2.0
# One sd_notify datagram: a few KEY=value lines.
NOTIFY_MAX = 4096


def worker_directory(state_dir: Path, index: int) -> Path:
    return state_dir / f"worker-{index}"


def worker_config(config: Config, index: int) -> Config:
    """The config worker ``index`` runs (see the module docstring); a worker
    past ``config.workers`` delivers an earlier run's spool and has no inputs."""
    kept = [i for i in config.inputs if index == 0 or i.endpoint.scheme not in LOCAL_SCHEMES]
    if index >= config.workers:
        kept = []
    return dataclasses.replace(
        config,
        state_dir=worker_directory(config.state_dir, index),
        inputs=tuple(dataclasses.replace(i, reuse_port=True) for i in kept),
        metrics=None,
        workers=1,
    )


def leftover_workers(state_dir: Path, count: int) -> list[int]:
    """Indexes K >= ``count`` of ``worker-K`` directories with spool segments."""
    found = []
    for path in state_dir.glob("worker-*"):
        index = path.name.removeprefix("worker-")
        if index.isdigit() and int(index) >= count and any(path.glob("spool/*/*.seg")):
            found.append(int(index))
    return sorted(found)


def needs_parent(config: Config) -> bool:
    """Whether ``relay run`` is a parent of workers: ``workers`` > 1, or an
    earlier run with workers left spools that must be delivered."""
    return config.workers > 1 or bool(leftover_workers(config.state_dir, 0))


def adopt_single_spool(state_dir: Path, count: int) -> Path | None:
    """An earlier run without workers left spools in ``state_dir/spool``: they
    become ``worker-M``'s (M past every worker directory), delivered by a
    worker of their own. A rename: the files stay as they are. Returns the
    new directory, or None when there was nothing to move."""
    spool = state_dir / "spool"
    if not any(spool.glob("*/*.seg")):
        return None
    names = [p.name.removeprefix("worker-") for p in state_dir.glob("worker-*")]
    index = max([count - 1, *(int(n) for n in names if n.isdigit())]) + 1
    target = worker_directory(state_dir, index)
    target.mkdir(mode=0o750)
    spool.rename(target / "spool")
    return target


def _how(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


@dataclasses.dataclass
class Worker:
    """One worker process as the parent sees it, across its restarts."""

    index: int
    drain: bool  # an earlier run's spool to deliver, no inputs
    notify_name: str
    process: trio.Process | None = None
    state: str = "starting"  # starting, up, restarting, stopped, delivered
    started: float = 0.0
    restarts: int = 0
    returncode: int | None = None
    ready: trio.Event = dataclasses.field(default_factory=trio.Event)

    def entry(self) -> dict[str, Any]:
        """This worker in the status document (relay/observe/fleet.py)."""
        return {
            "index": self.index,
            "pid": self.process.pid if self.process is not None else None,
            "state": self.state,
            "started": self.started,
            "restarts": self.restarts,
        }


class Fleet:
    """The parent process: the workers, their notifications and the control socket."""

    def __init__(
        self, config: Config, argv: Sequence[str], reread: Callable[[], Config] | None = None
    ) -> None:
        self.config = config
        self.reread = reread  # the config file again, to see whether workers changed
        self.argv = list(argv)  # `relay run ...` as the user gave it, without the program
        self.workers: list[Worker] = []  # open() finds them
        self.stats = stats.Registry()
        self.notifier = Notifier.from_environ()
        self.started = time.time()
        self.stopping = trio.Event()
        self.failed = False  # a worker could not start: exit 1
        self._lock: int | None = None
        self.control: control.ControlServer | None = None
        self.metrics: metrics.MetricsServer | None = None

    def command(self, worker: Worker) -> list[str]:
        return [sys.executable, "-m", "relay", *self.argv, "--worker", str(worker.index)]

    def environment(self, worker: Worker) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        env["NOTIFY_SOCKET"] = "@" + worker.notify_name
        return env

    async def open(self, identity: privileges.Identity | None) -> None:
        """Hold the state directory and bind the control socket and metrics."""
        state, count = self.config.state_dir, self.config.workers
        self._lock = app.lock_state_dir(state)
        moved = adopt_single_spool(state, count)
        if moved is not None:
            log.info(
                "relay: %s/spool holds what a run without workers left; moved to %s, "
                "to be delivered by a worker of its own",
                state,
                moved,
            )
        tag = f"relay-{os.getpid()}-{secrets.token_hex(4)}"
        indexes = [*range(count), *leftover_workers(state, count)]
        self.workers = [Worker(k, k >= count, f"{tag}-{k}") for k in indexes]
        self.control, self.metrics = await serving.open_observers(
            self.config, state, self.stats, self.document
        )
        if identity is not None:  # the workers become the user: they must get in
            privileges.give_state_dir(state, identity)

    async def run(self) -> int:
        """Start and supervise the workers until they have all stopped."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, signals)
                assert self.control is not None, "open() first"
                nursery.start_soon(self.control.serve)
                if self.metrics is not None:
                    log.info("relay: metrics on %s", self.metrics.url)
                    nursery.start_soon(self.metrics.serve)
                async with trio.open_nursery() as supervised:
                    for worker in self.workers:
                        sock = self._notify_socket(worker)
                        nursery.start_soon(self._notifications, worker, sock)
                        supervised.start_soon(self._supervise, worker)
                    nursery.start_soon(self._announce_ready)
                nursery.cancel_scope.cancel()
        self.notifier.close()
        unclean = [f"worker {w.index} {_how(w.returncode)}" for w in self.workers if w.returncode]
        log.log(
            logging.ERROR if unclean or self.failed else logging.INFO,
            "relay: all %d workers stopped%s",
            len(self.workers),
            f" ({', '.join(unclean)}: see above)" if unclean else "",
        )
        return 1 if unclean or self.failed else 0

    # -- the workers ----------------------------------------------------------

    async def _supervise(self, worker: Worker) -> None:
        """Run ``worker``, and again each time it dies, until the stop."""
        backoff = RESTART_BACKOFF
        while not self.stopping.is_set():
            worker.state = "starting"
            process = await trio.lowlevel.open_process(
                self.command(worker),
                env=self.environment(worker),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the parent only
            )
            worker.process, worker.started = process, time.time()
            began = trio.current_time()
            log.info(
                "relay: worker %d started (pid %d)%s",
                worker.index,
                process.pid,
                ": delivering what an earlier run left in its spool" if worker.drain else "",
            )
            returncode = await process.wait()
            worker.returncode = returncode
            worker.state = "stopped"
            if self.stopping.is_set():
                # Ended by our SIGTERM before its handler was set (still
                # starting: it read nothing) or after it was gone (its stop
                # was done): nothing was lost either way.
                if returncode == -signal.SIGTERM:
                    worker.returncode = 0
                return
            if worker.drain and returncode == 0:
                worker.state = "delivered"
                return
            if not worker.ready.is_set():
                log.error(
                    "relay: worker %d %s before it was ready (its error is above); "
                    "stopping the others",
                    worker.index,
                    _how(returncode),
                )
                self.failed = True
                self._stop()
                return
            if trio.current_time() - began >= STABLE_AFTER:
                backoff = backoff.reset()
            backoff = backoff.increment()
            delay = backoff.delay(random.random())
            worker.restarts += 1
            worker.state = "restarting"
            log.error(
                "relay: worker %d (pid %d) %s; starting it again in %.1f s (it replays its spool)",
                worker.index,
                process.pid,
                _how(returncode),
                delay,
            )
            with trio.move_on_after(delay):
                await self.stopping.wait()

    def _notify_socket(self, worker: Worker) -> trio.socket.SocketType:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind("\0" + worker.notify_name)
        return trio.socket.from_stdlib_socket(sock)

    async def _notifications(self, worker: Worker, sock: trio.socket.SocketType) -> None:
        """The worker's sd_notify datagrams: READY=1 means it serves."""
        with sock:
            while True:
                data = await sock.recv(NOTIFY_MAX)
                if b"READY=1" in data.split(b"\n") and worker.state == "starting":
                    worker.state = "up"
                    worker.ready.set()

    async def _announce_ready(self) -> None:
        """READY=1 to systemd once every worker with inputs has said it."""
        for worker in self.workers:
            if not worker.drain:
                await worker.ready.wait()
        log.info(
            "relay: all %d worker%s ready",
            self.config.workers,
            "s" if self.config.workers > 1 else "",
        )
        self.notifier.ready(self.summary())
        await self.notifier.keep_alive(self.summary)

    def summary(self) -> str:
        up = sum(w.state == "up" for w in self.workers if not w.drain)
        restarts = sum(w.restarts for w in self.workers)
        return f"{up} of {self.config.workers} workers up; {restarts} restarts"

    # -- signals --------------------------------------------------------------

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.info("relay: SIGHUP received; passing it to the workers")
                self._send(signal.SIGHUP, only_up=True)
                self._check_workers_setting()
            elif not self.stopping.is_set():
                log.info("relay: %s received; stopping the workers", name)
                self.notifier.stopping(f"{name} received; {self.summary()}")
                self._stop()
            else:
                log.warning("relay: second %s; the workers stop now", name)
                self._send(signal.SIGTERM)

    def _check_workers_setting(self) -> None:
        """One line if the file now asks for another number of workers (each
        worker says what else is wrong with it, if anything)."""
        if self.reread is None:
            return
        try:
            wanted = self.reread().workers
        except ConfigErrors:
            return
        if wanted != self.config.workers:
            log.warning(
                "relay: reload: [relay] workers changed from %d to %d: that needs a restart; "
                "until then %d workers run",
                self.config.workers,
                wanted,
                self.config.workers,
            )

    def _stop(self) -> None:
        self.stopping.set()
        self._send(signal.SIGTERM)

    def _send(self, signum: int, *, only_up: bool = False) -> None:
        """``signum`` to every running worker (a worker still starting has
        not set its handlers: SIGHUP would end it)."""
        for worker in self.workers:
            process = worker.process
            if process is None or process.returncode is not None:
                continue
            if only_up and worker.state != "up":
                continue
            process.send_signal(signum)

    # -- relay stats, /metrics ------------------------------------------------

    async def document(self) -> dict[str, Any]:
        """Every worker's status document, added up (relay/observe/fleet.py)."""
        docs: list[dict[str, Any] | None] = [None] * len(self.workers)

        async def ask(position: int, worker: Worker) -> None:
            if worker.state != "up":
                return
            path = control.socket_path(worker_directory(self.config.state_dir, worker.index))
            with contextlib.suppress(control.NotRunning):
                docs[position] = await trio.to_thread.run_sync(
                    control.request, path, "stats", STATS_TIMEOUT
                )

        async with trio.open_nursery() as nursery:
            for position, worker in enumerate(self.workers):
                nursery.start_soon(ask, position, worker)
        base = {
            "version": status.VERSION,
            "relay": __version__,
            "pid": os.getpid(),
            "time": time.time(),
            "started": self.started,
            "state_dir": str(self.config.state_dir),
        }
        return fleet.fleet_document(docs, [w.entry() for w in self.workers], base)


async def run(
    config: Config, argv: Sequence[str], reread: Callable[[], Config] | None = None
) -> int:
    """Run ``config.workers`` workers (``argv``: ``run ...`` as given); the
    exit status. ``reread`` reads the config again (SIGHUP)."""
    identity = None
    if config.user:  # checked before anything is started: a mistake costs nothing
        identity = privileges.resolve(config.user, config.group)
        privileges.check_root(identity)
    parent = Fleet(config, argv, reread)
    try:
        await parent.open(identity)
    except BaseException:
        if parent.control is not None:
            parent.control.close()
        if parent.metrics is not None:
            await parent.metrics.aclose()
        parent.notifier.close()
        raise
    log.info(
        "relay: starting %d worker%s (state in %s/worker-N)%s",
        config.workers,
        "s" if config.workers > 1 else "",
        config.state_dir,
        ""
        if len(parent.workers) == config.workers
        else f" and {len(parent.workers) - config.workers} to deliver an earlier run's spools",
    )
    return await parent.run()
