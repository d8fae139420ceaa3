"""What the relay is doing, as one document: for ``relay stats``, the metrics
and the periodic stats line.

:func:`document` reads every component's counters (relay/stats.py), each
spool's :meth:`~relay.spool.spool.Spool.statistics`, each output's upstream
state and each datagram socket's kernel drop count when asked, and at no other
time: seeing into the relay costs nothing per message.

Per output the counts add up: ``recovered + received = delivered + dropped +
queued``, where ``recovered`` is what the spool found on disk at start,
``received`` what the router offered the output (what its filter passed),
``dropped`` the sum of its reasons and ``queued`` what memory and disk hold
(in flight included: a message leaves the queue only once it is safe).

The document is plain JSON (``relay stats --json`` prints it as it comes);
``version`` changes if a key changes meaning. Times are Unix seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import trio

from relay import __version__
from relay.config import Config
from relay.outputs.delivery import Output
from relay.outputs.file import FileOutput
from relay.outputs.http import HttpOutput
from relay.outputs.relp import RelpOutput
from relay.outputs.tcp import TcpOutput
from relay.outputs.udp import UdpOutput
from relay.policy.targets import State
from relay.stats import Registry
from relay.tls.context import ReloadableContext

log = logging.getLogger("relay")

VERSION = 1

# getsockopt(SOL_SOCKET, SO_MEMINFO) (Linux 3.9+, asm-generic/socket.h): nine
# u32 counters of the socket's memory; the last, SK_MEMINFO_DROPS, is what
# the kernel dropped because the receive buffer was full (UDP; the same
# number as the "drops" column of /proc/net/udp) or a socket filter refused.
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
SK_MEMINFO_RMEM_ALLOC = 0
SK_MEMINFO_DROPS = 8
_MEMINFO_SIZE = 9 * 4

# Output drop reasons, and the counters each sums (output's, then spool's).
DROP_REASONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "queue_full": (("dropped_queue_full",), ()),  # a datagram input met a full spool
    "drop_newest": ((), ("dropped_newest",)),  # on_full = "drop_newest"
    "drop_oldest": ((), ("dropped_oldest",)),  # on_full = "drop_oldest"
    "unreachable": (("dropped_unreachable",), ()),  # udp:// output, ICMP port unreachable
    "rejected": (("dropped_rejected",), ()),  # a RELP collector refused them
}
# Input drop reasons and their counters.
INPUT_DROPS = {"oversize": "dropped_oversize", "rate_limited": "rate_limited"}
# Why an input with proxy_protocol refused connections (its proxy_<reason> counters).
PROXY_REFUSALS = ("untrusted", "bad_header")


class Observed(Protocol):
    """What the document is read from (relay.app.Relay)."""

    config: Config
    stats: Registry
    outputs: list[Output]

    @property
    def inputs(self) -> Sequence[Any]: ...

    def tls_contexts(self) -> list[tuple[str, ReloadableContext]]: ...


def kernel_counters(sock: socket.socket | None) -> tuple[int, int] | None:
    """(dropped, bytes waiting) of a datagram socket, as the kernel counts them;
    None if it cannot tell (closed socket, not Linux)."""
    if sock is None or sock.fileno() < 0:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_SIZE)
    except OSError:
        return None
    if len(raw) < _MEMINFO_SIZE:
        return None
    values = struct.unpack(f"{len(raw) // 4}I", raw)
    return values[SK_MEMINFO_DROPS], values[SK_MEMINFO_RMEM_ALLOC]


def _tls(counters: Mapping[str, int]) -> dict[str, int]:
    """TLS handshake failures by reason (the ``tls_<reason>`` counters)."""
    return {
        key.removeprefix("tls_"): value
        for key, value in counters.items()
        if key.startswith("tls_") and key != "tls_failures"
    }


def _input(item: Any, counters: Mapping[str, int]) -> dict[str, Any]:
    config = item.config
    entry: dict[str, Any] = {
        "url": item.address,
        "received": counters.get("received", 0),
        "bytes": counters.get("bytes", 0),
        "dropped": {reason: counters.get(key, 0) for reason, key in INPUT_DROPS.items()},
        "rate_limit_delays": counters.get("rate_limit_delays", 0),
        "tls_failures": _tls(counters) if config.tls is not None else {},
        "counters": dict(counters),
    }
    if config.proxy_protocol:
        entry["proxy_refused"] = {
            reason: counters.get(f"proxy_{reason}", 0) for reason in PROXY_REFUSALS
        }
        entry["proxy_health_checks"] = counters.get("proxy_local", 0)
    if config.endpoint.scheme in ("udp", "unix"):
        kernel = kernel_counters(getattr(item, "sock", None))
        entry["dropped"]["kernel"] = kernel[0] if kernel else 0
        entry["kernel_queued_bytes"] = kernel[1] if kernel else 0
    return entry


def _targets(output: Output) -> list[dict[str, Any]]:
    """Each target with whether it is connected and whether it works."""
    failing = bool(output.last_error)
    if isinstance(output, TcpOutput | HttpOutput):  # HTTP: up once it answered
        return [
            {
                "url": t.endpoint.url,
                "state": t.state.value,
                "connected": t.state is State.UP,
                "up": t.healthy and t.state is not State.DOWN,
                "last_error": t.reason if not t.healthy else "",
            }
            for t in output.targets.targets
        ]
    if isinstance(output, RelpOutput):
        session = output._session
        connected = session is not None and not session.lost
    elif isinstance(output, UdpOutput):
        connected = output.sock is not None
    elif isinstance(output, FileOutput):
        connected = not failing
    else:
        connected = False
    url = output.config.endpoint.url
    state = "up" if connected else ("down" if failing else "idle")
    return [
        {
            "url": url,
            "state": state,
            "connected": connected,
            "up": not failing,
            "last_error": output.last_error,
        }
    ]


def _output(output: Output, spool_counters: Mapping[str, int], now: float) -> dict[str, Any]:
    counters = output.counters.snapshot()
    dropped = {
        reason: sum(counters.get(k, 0) for k in own) + sum(spool_counters.get(k, 0) for k in spool)
        for reason, (own, spool) in DROP_REASONS.items()
    }
    # A RELP refusal and an unreachable udp:// target are answers too: the
    # window counts them delivered; here they are dropped instead.
    delivered = counters["delivered"] - dropped["rejected"] - dropped["unreachable"]
    received = counters["queued"] + dropped["queue_full"] + dropped["drop_newest"]
    spool = output.spool.statistics()
    targets = _targets(output)
    failing = bool(output.last_error)
    return {
        "url": " or ".join(t.url for t in output.config.all_targets),
        "received": received,
        "recovered": output.spool.recovered,
        "delivered": delivered,
        "delivered_bytes": counters["bytes"],
        "dropped": dropped,
        "queued": {
            "memory": {"messages": spool.memory_messages, "bytes": spool.memory_bytes},
            "disk": {"messages": spool.disk_messages, "bytes": spool.disk_bytes},
        },
        "oldest_age": None
        if spool.oldest_received is None
        else round(max(0.0, now - spool.oldest_received), 3),
        "upstream": {
            "state": "down" if failing else "up",
            "connected": [t["url"] for t in targets if t["connected"]],
            "down_since": output.down_since if failing else None,
            "last_error": output.last_error,
            "targets": targets,
        },
        "tls_failures": _tls(counters) if output.config.tls is not None else {},
        "counters": counters,
        "spool": dict(spool_counters),
    }


def _certificates(relay: Observed) -> dict[str, dict[str, Any]]:
    """Each certificate file in use with the earliest expiry in it (a CA bundle
    holds many: the first to expire is the one that matters)."""
    found: dict[str, dict[str, Any]] = {}
    for _, context in relay.tls_contexts():
        for info in context.certificates:
            expires = info.not_after.timestamp()
            known = found.get(info.source)
            if known is None or expires < known["not_after"]:
                found[info.source] = {"subject": info.subject, "not_after": expires}
    return found


def document(relay: Observed, started: float, now: float | None = None) -> dict[str, Any]:
    """The relay's state now, as the module docstring describes."""
    now = time.time() if now is None else now
    snapshot = relay.stats.snapshot()
    inputs = snapshot.get("input", {})
    spools = snapshot.get("spool", {})
    return {
        "version": VERSION,
        "relay": __version__,
        "pid": os.getpid(),
        "time": now,
        "started": started,
        "state_dir": str(relay.config.state_dir),
        "inputs": {
            item.config.name: _input(item, inputs.get(item.config.name, {}))
            for item in relay.inputs
        },
        "outputs": {o.name: _output(o, spools.get(o.name, {}), now) for o in relay.outputs},
        "certificates": _certificates(relay),
        "other": {k: v for k, v in snapshot.items() if k not in ("input", "output", "spool")},
    }


def queued(entry: Mapping[str, Any]) -> int:
    """Messages an output's document entry says are queued, memory and disk."""
    return int(entry["queued"]["memory"]["messages"] + entry["queued"]["disk"]["messages"])


def dropped(entry: Mapping[str, Any]) -> int:
    return int(sum(entry["dropped"].values()))


def size(nbytes: float) -> str:
    """Bytes for people: 512 B, 3.1 KiB, 58.0 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def span(seconds: float) -> str:
    """A duration for people: 0.2s, 42s, 5m12s, 3h04m, 2d03h."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def upstream(entry: Mapping[str, Any], now: float) -> str:
    """``up tcp://a:514`` or ``down 5m12s: connection refused``."""
    up = entry["upstream"]
    if up["state"] == "up":
        return "up " + (", ".join(up["connected"]) or "(not connected)")
    since = up["down_since"]
    ago = f" {span(now - since)}" if since is not None else ""
    return f"down{ago}: {up['last_error']}"


def log_lines(doc: Mapping[str, Any]) -> list[str]:
    """The periodic stats lines: one per output, and one per datagram input
    (the kernel's drops are seen nowhere else in the log)."""
    now = doc["time"]
    lines = []
    for name, entry in doc["inputs"].items():
        if "kernel" in entry["dropped"]:
            lines.append(
                f"input {name}: received {entry['received']}, dropped "
                f"{sum(entry['dropped'].values())} (kernel {entry['dropped']['kernel']})"
            )
    for name, entry in doc["outputs"].items():
        memory, disk = entry["queued"]["memory"], entry["queued"]["disk"]
        oldest = entry["oldest_age"]
        lines.append(
            f"output {name}: received {entry['received']}, delivered {entry['delivered']}, "
            f"dropped {dropped(entry)}, queued {memory['messages']} in memory "
            f"({size(memory['bytes'])}) and {disk['messages']} on disk "
            f"({size(disk['bytes'])}), oldest "
            f"{'-' if oldest is None else span(oldest)}, upstream {upstream(entry, now)}"
        )
    return lines


async def log_periodically(relay: Observed, started: float, interval: float) -> None:
    """Every ``interval`` seconds, :func:`log_lines` in the relay's log."""
    while True:
        await trio.sleep(interval)
        for line in log_lines(document(relay, started)):
            log.info("stats: %s", line)
