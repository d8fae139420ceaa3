"""``relay stats``: what a running relay is doing, read from its control socket.

:func:`table` renders the status document (relay/status.py) for people; the
command prints it once, as JSON (``--json``), or refreshed every few
seconds with rates per second (``--watch``), until Ctrl-C.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from relay import config
from relay.cli.commands import _config_option, _fail
from relay.errors import ConfigErrors
from relay.observe import control, status

Doc = Mapping[str, Any]

INPUT_COLUMNS = (
    "INPUT",
    "RECEIVED",
    "BYTES",
    "DROPPED",
    "KERNEL_DROPS",
    "RATE_LIMITED",
    "TLS_FAIL",
)
OUTPUT_COLUMNS = (
    "OUTPUT",
    "RECEIVED",
    "DELIVERED",
    "DROPPED",
    "MEMORY",
    "DISK",
    "OLDEST",
    "UPSTREAM",
)
RATE_COLUMNS = ("IN/S", "OUT/S")
# --watch: the screen is cleared and the table drawn again (as top does).
CLEAR = "\033[H\033[2J"


def _align(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell: names left, numbers right, the
    last column as it is (it may be long)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i == len(row) - 1:
                cells.append(cell)
            elif i == 0:
                cells.append(cell.ljust(widths[i]))
            else:
                cells.append(cell.rjust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return lines


def _rate(now: Doc, before: Doc | None, kind: str, name: str, key: str) -> str:
    if before is None or name not in before[kind]:
        return "-"
    seconds = now["time"] - before["time"]
    if seconds <= 0:
        return "-"
    return f"{(now[kind][name][key] - before[kind][name][key]) / seconds:.0f}"


def _queued(place: Mapping[str, int]) -> str:
    return f"{place['messages']} ({status.size(place['bytes'])})"


def table(doc: Doc, before: Doc | None = None) -> str:
    """The aligned tables; with ``before`` (the previous document), rates per second."""
    now = doc["time"]
    up = status.span(now - doc["started"])
    lines = [f"relay {doc['relay']}, pid {doc['pid']}, up {up}, state_dir {doc['state_dir']}"]
    if "workers" in doc:  # [relay] workers: the figures below are theirs added up
        lines.append(_workers(doc["workers"]))
    lines.append("")
    rates = before is not None
    notes: list[str] = []
    rows: list[list[str]] = [
        [*INPUT_COLUMNS[:2], *(RATE_COLUMNS[:1] if rates else ()), *INPUT_COLUMNS[2:]]
    ]
    for name, entry in doc["inputs"].items():
        dropped = entry["dropped"]
        tls = entry["tls_failures"]
        rows.append(
            [
                name,
                str(entry["received"]),
                *([_rate(doc, before, "inputs", name, "received")] if rates else []),
                status.size(entry["bytes"]),
                str(sum(dropped.values())),
                str(dropped["kernel"]) if "kernel" in dropped else "-",
                str(dropped["rate_limited"]),
                str(sum(tls.values())) if tls or entry["counters"].get("tls_failures") else "-",
            ]
        )
        notes += _reasons(name, "dropped", dropped) + _reasons(name, "TLS failures", tls)
        notes += _reasons(name, "PROXY refusals", entry.get("proxy_refused", {}))
    lines += _align(rows)
    rows = [[*OUTPUT_COLUMNS[:3], *(RATE_COLUMNS[1:] if rates else ()), *OUTPUT_COLUMNS[3:]]]
    for name, entry in doc["outputs"].items():
        oldest = entry["oldest_age"]
        rows.append(
            [
                name,
                str(entry["received"]),
                str(entry["delivered"]),
                *([_rate(doc, before, "outputs", name, "delivered")] if rates else []),
                str(status.dropped(entry)),
                _queued(entry["queued"]["memory"]),
                _queued(entry["queued"]["disk"]),
                "-" if oldest is None else status.span(oldest),
                status.upstream(entry, now),
            ]
        )
        notes += _reasons(name, "dropped", entry["dropped"])
        notes += _reasons(name, "TLS failures", entry["tls_failures"])
        if entry["recovered"]:
            notes.append(f"{name}: {entry['recovered']} messages recovered from disk at start")
    lines += ["", *_align(rows)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _reasons(name: str, what: str, counts: Mapping[str, int]) -> list[str]:
    shown = ", ".join(f"{reason} {n}" for reason, n in counts.items() if n)
    return [f"{name}: {what}: {shown}"] if shown else []


def _workers(workers: Sequence[Mapping[str, Any]]) -> str:
    """``workers: 2 (added up below): 0 up pid 812, 1 restarting (3 restarts)``."""
    shown = []
    for worker in workers:
        state = "up" if worker["answered"] else worker["state"]
        pid = f" pid {worker['pid']}" if worker["answered"] else ""
        restarts = worker["restarts"]
        again = f" ({restarts} restart{'s' if restarts != 1 else ''})" if restarts else ""
        shown.append(f"{worker['index']} {state}{pid}{again}")
    return f"workers: {len(workers)} (added up below): {', '.join(shown)}"


def _state_dir(config_file: str | None, state_dir: str | None) -> Path:
    """Where the relay keeps its control socket: --state-dir, the config's
    state_dir, or the default one."""
    try:
        if state_dir is not None:
            return config.state_dir_argument(state_dir)
        if config_file is not None:
            return config.load(config_file).state_dir
    except ConfigErrors as exc:
        _fail("\n".join(f"error: {e}" for e in exc.errors))
    return config.default_state_dir()


def _ask(path: Path) -> dict[str, Any]:
    try:
        return control.request(path, "stats")
    except control.NotRunning as exc:
        _fail(f"error: {exc}")


@click.command()
@_config_option
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="The relay's state_dir, if not the config file's.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@click.option(
    "-w",
    "--watch",
    type=click.FloatRange(min=0.1, max=3600),
    metavar="SECONDS",
    is_flag=False,
    flag_value=2.0,
    default=None,
    help="Refresh every SECONDS (2 if not given) with rates per second; Ctrl-C ends it.",
)
def stats(
    config_file: str | None, state_dir: str | None, as_json: bool, watch: float | None
) -> None:
    """Show what a running relay is doing: per input and output the messages
    received, delivered, dropped and queued, and each output's upstream.

    Reads the control socket state_dir/control.sock of the relay that
    -c FILE (or --state-dir) describes.

    \b
    Columns (relay(8) says more):
      RECEIVED      messages taken in (inputs) or routed to the output
      IN/S, OUT/S   received and delivered per second (--watch)
      BYTES         bytes received
      DROPPED       dropped, all reasons (listed under the table)
      KERNEL_DROPS  datagrams the kernel dropped, receive buffer full
      RATE_LIMITED  messages dropped by the input's rate limit
      TLS_FAIL      failed TLS handshakes (reasons under the table)
      DELIVERED     delivered to the upstream (acknowledged for RELP)
      MEMORY, DISK  queued messages (bytes) in memory and on disk
      OLDEST        age of the oldest queued message
      UPSTREAM      up and connected to which target, or down since when and why

    \b
    Exit status: 0 shown; 1 the relay is not running or cannot be read.
    """
    path = control.socket_path(_state_dir(config_file, state_dir))
    if watch is None:
        doc = _ask(path)
        click.echo(json.dumps(doc, indent=2) if as_json else table(doc))
        return
    before: dict[str, Any] | None = None
    try:
        while True:
            doc = _ask(path)
            if as_json:
                click.echo(json.dumps(doc, separators=(",", ":")))
            else:
                screen = table(doc, before)
                click.echo(f"{CLEAR}{screen}" if sys.stdout.isatty() else f"{screen}\n")
            sys.stdout.flush()
            before = doc
            time.sleep(watch)
    except KeyboardInterrupt:
        pass  # what ends --watch: exit 0, no traceback
