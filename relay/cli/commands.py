"""The ``relay`` command: thin click wrappers around the modules that do the work.

A user mistake (bad config, busy port, unreachable target) ends with one line
on standard error and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
import trio

from relay import __version__, app, config, workers
from relay.cli import sender
from relay.errors import ConfigErrors, RelayError
from relay.service import running
from relay.tls.context import load_files

log = logging.getLogger("relay")

ENDPOINT_HELP = (
    "Endpoint URLs: udp://HOST[:PORT] and tcp://HOST[:PORT] (default port 514), "
    "relp://HOST:PORT (RELP, port required), unix:///PATH and unix+stream:///PATH "
    "(local sockets: inputs), file:///PATH or "
    "file:- for standard output (outputs), tls://HOST[:PORT] (default port 6514) and "
    "relp+tls://HOST:PORT (outputs here, checked against the system's CAs; a TLS "
    "input needs a certificate, so a config file: relay.toml(5)), "
    "http://HOST[:PORT] and https://HOST[:PORT] (default ports 80 and 443; inputs: JSON "
    "records POSTed to /v1/ingest; outputs: to an ingestion API, with its /PATH after the port)."
)


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


def _setup_logging(level: str, tag: str = "") -> None:
    """The relay's log on standard error; ``tag`` (``[worker 1]``) after the level."""
    handler = logging.StreamHandler(sys.stderr)
    where = f"{tag} " if tag else ""
    handler.setFormatter(_UTCFormatter(f"%(asctime)s %(levelname)s {where}%(message)s"))
    root = logging.getLogger("relay")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _fail(message: str, status: int = 1) -> NoReturn:
    for line in message.splitlines():
        click.echo(f"relay: {line}", err=True)
    sys.exit(status)


def _leaf_errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaf_errors(sub)]
    return [exc]


def _run_trio(main: Callable[..., Any], *args: Any) -> Any:
    """trio.run, translating our errors (even inside exception groups) to one line."""
    try:
        return trio.run(main, *args)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BaseException as exc:
        leaves = _leaf_errors(exc)
        ours = [e for e in leaves if isinstance(e, RelayError)]
        if ours and len(ours) == len(leaves):
            _fail("\n".join(f"error: {e}" for e in ours))
        raise


def _read(
    config_file: str | None,
    inputs: Sequence[str],
    outputs: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
) -> config.Config:
    """The config, with every TLS profile's files read, and the command line's
    ``overrides``; ConfigErrors lists every mistake. ``relay run`` keeps this
    to read the config again at SIGHUP, exactly as at the start."""
    base = config.load(config_file) if config_file else config.default_config()
    cfg = config.with_endpoints(base, list(inputs), list(outputs), replace=config_file is None)
    problems = config.check_files(cfg, load_files)
    if problems:
        raise ConfigErrors(problems)
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def _load(config_file: str | None, inputs: Sequence[str], outputs: Sequence[str]) -> config.Config:
    """:func:`_read`, or one line per mistake, each naming file, line and key,
    for ``relay check`` and ``relay run`` alike."""
    try:
        return _read(config_file, inputs, outputs)
    except ConfigErrors as exc:
        _fail("\n".join(f"error: {e}" for e in exc.errors))


_config_option = click.option(
    "-c",
    "--config",
    "config_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (see relay.toml(5)).",
)
_input_option = click.option(
    "--input",
    "inputs",
    metavar="URL",
    multiple=True,
    help="Listen on this endpoint (repeatable), e.g. udp://0.0.0.0:514.",
)
_output_option = click.option(
    "--output",
    "outputs",
    metavar="URL",
    multiple=True,
    help="Forward to this endpoint (repeatable), e.g. tcp://collector:514.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """relay: a syslog relay server.

    Receives RFC 5424 and RFC 3164 syslog over UDP, TCP, TLS, RELP and unix
    sockets and forwards it to upstream collectors, each output behind its own
    queue.
    See relay(8) and relay.toml(5).
    """


@main.command()
@_config_option
@_input_option
@_output_option
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Where spools and the lock live [default: $STATE_DIRECTORY under systemd, "
    "/var/lib/relay as root, else $XDG_STATE_HOME/relay].",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0, min_open=True, max=config.MAX_SECONDS),
    metavar="SECONDS",
    help="How long a stop may spend delivering what is queued [default: 30].",
)
@click.option(
    "--log-level",
    type=click.Choice(config.LOG_LEVELS),
    help="Least severe level of the relay's own log [default: info].",
)
@click.option(
    "--user",
    metavar="NAME",
    help="Started as root: run as this user once every input is bound and the "
    "state directory is open, before reading any message.",
)
@click.option(
    "--group",
    metavar="NAME",
    help="With --user: run with this group [default: the user's own].",
)
# Internal: how the parent of [relay] workers starts worker K (relay/workers.py).
@click.option("--worker", type=click.IntRange(min=0), hidden=True)
def run(
    config_file: str | None,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    state_dir: str | None,
    stop_timeout: float | None,
    log_level: str | None,
    user: str | None,
    group: str | None,
    worker: int | None,
) -> None:
    """Run the relay in the foreground until SIGTERM or SIGINT.

    With no options it listens on udp://127.0.0.1:5514 and tcp://127.0.0.1:5514
    and writes every message to standard output. --input and --output add
    endpoints to the config file's; without a config file they replace the
    built-in defaults of their kind.

    \b
    Examples:
      relay run
      relay run -c /etc/relay/relay.toml
      relay run --input udp://0.0.0.0:514 --input tcp://0.0.0.0:514 \\
                --output tcp://collector.example.net:514
      relay run -c /etc/relay/relay.toml --user relay
    """
    cfg = _load(config_file, inputs, outputs)
    overrides: dict[str, Any] = {}
    if state_dir is not None:
        try:
            overrides["state_dir"] = config.state_dir_argument(state_dir)
        except ConfigErrors as exc:
            _fail("\n".join(f"error: {e}" for e in exc.errors))
    if stop_timeout is not None:
        overrides["stop_timeout"] = stop_timeout
    if log_level is not None:
        overrides["log_level"] = log_level
    if user is not None:
        overrides.update(user=user, group=group or "")
    elif group is not None:
        if not cfg.user:
            _fail("error: --group needs --user (or [relay] user): it is the user's group")
        overrides["group"] = group
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    reread = functools.partial(_read, config_file, inputs, outputs, overrides)
    if worker is not None:
        _setup_logging(cfg.log_level, f"[worker {worker}]")
        parent = os.getppid()

        def reread_worker() -> config.Config:
            # The number of workers is the start's (the parent says when the
            # file asks for another: it needs a restart).
            again = dataclasses.replace(reread(), workers=cfg.workers)
            return workers.worker_config(again, worker)

        status = _run_trio(
            functools.partial(app.run, parent=parent),
            workers.worker_config(cfg, worker),
            reread_worker,
        )
    elif workers.needs_parent(cfg):
        _setup_logging(cfg.log_level)
        status = _run_trio(workers.run, cfg, sys.argv[1:], reread)
    else:
        _setup_logging(cfg.log_level)
        status = _run_trio(app.run, cfg, reread)
    sys.exit(status)


run.epilog = ENDPOINT_HELP


@main.command()
@_config_option
@_input_option
@_output_option
def check(config_file: str | None, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """Validate a configuration and exit: 0 if valid, 1 with one line per mistake.

    Each line names the file, line and key to fix. Nothing is started.
    """
    cfg = _load(config_file, inputs, outputs)
    click.echo(
        f"{cfg.source}: ok: {_plural(len(cfg.inputs), 'input')} "
        f"({', '.join(i.endpoint.url for i in cfg.inputs)}), "
        f"{_plural(len(cfg.outputs), 'output')} "
        f"({', '.join(' or '.join(t.url for t in o.all_targets) for o in cfg.outputs)})"
    )


check.epilog = ENDPOINT_HELP


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@main.command()
@_config_option
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="The state directory of the relay to reload [default: the config file's "
    "state_dir, else as relay run's].",
)
def reload(config_file: str | None, state_dir: str | None) -> None:
    """Tell the running relay to read its config file again (SIGHUP).

    The relay is the one that holds the state directory: --state-dir, else
    the [relay] state_dir of the config file given with -c, else the
    default. It reads the file (and command line) it was started with:
    inputs and outputs that did not change keep their connections and
    queues; an invalid file changes nothing. Its log says what it did.

    \b
    Exit status: 0 the relay was told; 1 no relay is running with that state
    directory, or it may not be signalled; 2 the config file given with -c
    is not valid (one line per mistake, as relay check prints them).
    """
    if state_dir is not None:
        try:
            where = config.state_dir_argument(state_dir)
        except ConfigErrors as exc:
            _fail("\n".join(f"error: {e}" for e in exc.errors), 2)
    elif config_file is not None:
        try:
            where = config.load(config_file).state_dir
        except ConfigErrors as exc:
            _fail("\n".join(f"error: {e}" for e in exc.errors), 2)
    else:
        where = config.default_state_dir()
    try:
        pid = running.reload(where)
    except running.NotRunning as exc:
        _fail(f"error: {exc}")
    click.echo(f"relay: told the relay (pid {pid}) to reload; its log says what changed", err=True)


@main.command()
@click.argument("url")
@click.option(
    "-n",
    "--count",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="How many messages to send.",
)
@click.option(
    "-r",
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="MSG/S",
    help="Messages per second over all connections; 0 is as fast as possible.",
)
@click.option(
    "-s",
    "--size",
    type=click.IntRange(min=0, max=1 << 24),
    default=0,
    metavar="BYTES",
    help="Pad each message to this many bytes.",
)
@click.option(
    "--connections",
    type=click.IntRange(min=1, max=10000),
    default=1,
    show_default=True,
    help="TCP connections to spread the messages over.",
)
@click.option(
    "--framing",
    type=click.Choice(["octet-counting", "non-transparent"]),
    default="octet-counting",
    show_default=True,
    help="TCP framing (RFC 6587): octet counts, or LF after each message.",
)
@click.option(
    "--start",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="First sequence number.",
)
@click.option("-m", "--message", "text", default="", help="Text to put after seq=<n>.")
@click.option(
    "--proxy-from",
    metavar="ADDR:PORT",
    default=None,
    help="TCP: start each connection with a PROXY protocol header naming this client "
    "(as a load balancer would), e.g. 192.0.2.7:40000 or [2001:db8::7]:40000.",
)
@click.option(
    "--proxy-version",
    type=click.Choice(["1", "2"]),
    default="2",
    show_default=True,
    help="The PROXY header's version: 1 (text) or 2 (binary).",
)
def send(
    url: str,
    count: int,
    rate: float,
    size: int,
    connections: int,
    framing: str,
    start: int,
    text: str,
    proxy_from: str | None,
    proxy_version: str,
) -> None:
    """Send numbered test messages to URL (tcp://, udp:// or unix://).

    Every message is RFC 5424 and its MSG starts with seq=<n>, counting from
    --start, so the far end of a pipeline can check that each arrived once.
    """
    try:
        endpoint = config.parse_endpoint(url, "send")
    except ValueError as exc:
        _fail(f"error: {exc}", 2)
    client = None
    if proxy_from is not None:
        client = _proxy_client(proxy_from, endpoint.scheme)
    plan = sender.SendPlan(
        endpoint=endpoint,
        count=count,
        rate=rate,
        size=size,
        connections=connections,
        framing=framing,
        start=start,
        text=text,
        proxy_from=client,
        proxy_version=int(proxy_version),
    )
    try:
        seconds = _run_trio(sender.send, plan)
    except (OSError, ValueError) as exc:
        _fail(f"error: cannot send to {url}: {_why(exc)}")
    except BaseExceptionGroup as group:
        errors = [e for e in _leaf_errors(group) if isinstance(e, OSError | ValueError)]
        if not errors:
            raise
        _fail(f"error: cannot send to {url}: {_why(errors[0])}")
    rate_done = count / seconds if seconds > 0 else float("inf")
    click.echo(
        f"relay: sent {_plural(count, 'message')} to {url} in {seconds:.2f} s "
        f"({rate_done:,.0f} msg/s)",
        err=True,
    )


def _why(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else "") or str(exc)


def _proxy_client(text: str, scheme: str) -> tuple[str, int]:
    """``--proxy-from``'s address and port; one line and exit 2 if it is wrong."""
    if scheme != "tcp":
        _fail(f"error: --proxy-from: a PROXY header starts a TCP connection, not {scheme}://", 2)
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError(port)
    except ValueError:
        _fail(f"error: --proxy-from: {text!r} is not ADDR:PORT (e.g. 192.0.2.7:40000)", 2)
    return str(address), number


class _DiskFiles:
    """The converter's view of the file system (relay.importer.Files)."""

    def read(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    def glob(self, pattern: str) -> list[str]:
        return sorted(p for p in glob.glob(pattern) if Path(p).is_file())


@main.command("import-rsyslog")
@click.argument("file", metavar="FILE")
def import_rsyslog(file: str) -> None:
    """Convert an rsyslog configuration to relay.toml, printed on standard output.

    Reads FILE (e.g. /etc/rsyslog.conf) and the files it includes, legacy
    $Directives and selector lines and RainerScript alike. Each table of the
    output names the file and line it came from. Every line that could not be
    converted is listed on standard error as FILE:LINE: why.

    \b
    Exit status: 0 everything was converted; 1 something was not (the rest
    is printed); 2 FILE cannot be read.

    \b
    Example:
      relay import-rsyslog /etc/rsyslog.conf > relay.toml && relay check -c relay.toml
    """
    # Only this command converts: the other commands do not import the converter.
    from relay.importer import UnreadableConfig, convert

    try:
        result = convert(file, _DiskFiles())
    except UnreadableConfig as exc:
        _fail(f"error: {exc}", 2)
    click.echo(result.toml, nl=False)
    for problem in result.problems:
        click.echo(f"{problem}", err=True)
    sys.exit(1 if result.problems else 0)
