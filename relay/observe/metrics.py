"""Prometheus metrics: the status document (relay/status.py) in the text
exposition format 0.0.4, served over HTTP at ``[relay] metrics``.

Written here rather than with prometheus_client: its registry wants metric
objects updated as things happen (or a custom collector called from its own
threaded HTTP server), while relay's counters already exist and are read
only when asked; what is left is the text format, a page of code. The
listener is a few lines on trio, so a scrape never touches a thread.

The HTTP side is deliberately small: one ``GET /metrics`` (or ``HEAD``) per
connection, answered and closed. A request is at most MAX_REQUEST bytes of
request line and headers, read within REQUEST_TIMEOUT, with at most
MAX_CLIENTS at once; anything else gets a short error status, and every
refusal is counted (``metrics`` in the stats), so no client can hold the
relay's attention or memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import trio

from relay.config import host_port
from relay.errors import StartupError
from relay.observe.clients import Clients, read_request
from relay.observe.control import Command, answer
from relay.stats import Counters

log = logging.getLogger("relay")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request line and headers: Prometheus sends about 300 bytes; curl less.
# nginx's default large_client_header_buffers is 8 KiB; so is ours.
MAX_REQUEST = 8192

# name -> (type, help). Counters end in _total (Prometheus naming conventions).
METRICS: dict[str, tuple[str, str]] = {
    "relay_start_time_seconds": ("gauge", "When the relay started, in Unix seconds."),
    "relay_input_received_messages_total": ("counter", "Messages an input received."),
    "relay_input_received_bytes_total": ("counter", "Bytes of the messages an input received."),
    "relay_input_dropped_messages_total": (
        "counter",
        "Messages an input dropped, by reason (oversize, rate_limited, kernel).",
    ),
    "relay_udp_kernel_drops_total": (
        "counter",
        "Datagrams the kernel dropped for a udp:// or unix:// input (receive buffer full).",
    ),
    "relay_input_proxy_refused_connections_total": (
        "counter",
        "Connections a proxy_protocol input refused, by reason (untrusted, bad_header).",
    ),
    "relay_input_proxy_health_checks_total": (
        "counter",
        "PROXY LOCAL connections (a balancer's health checks) a proxy_protocol input closed.",
    ),
    "relay_output_received_messages_total": (
        "counter",
        "Messages routed to an output (received = delivered + dropped + queued).",
    ),
    "relay_output_delivered_messages_total": (
        "counter",
        "Messages an output delivered (written to its target, acknowledged for RELP).",
    ),
    "relay_output_delivered_bytes_total": ("counter", "Bytes of the messages delivered."),
    "relay_output_dropped_messages_total": (
        "counter",
        "Messages an output dropped, by reason "
        "(queue_full, drop_newest, drop_oldest, unreachable, rejected).",
    ),
    "relay_spool_messages": ("gauge", "Messages queued for an output, in memory or on disk."),
    "relay_spool_bytes": (
        "gauge",
        "Bytes queued for an output: messages in memory, segment files on disk.",
    ),
    "relay_spool_oldest_age_seconds": (
        "gauge",
        "Age of the oldest message queued for an output (0 when none is).",
    ),
    "relay_output_up": (
        "gauge",
        "1 if the output's target works (its last attempt succeeded), else 0.",
    ),
    "relay_output_connected": ("gauge", "1 if the output holds a connection to the target."),
    "relay_tls_failures_total": (
        "counter",
        "TLS handshakes that failed, by endpoint (input.NAME, output.NAME) and reason.",
    ),
    "relay_certificate_expiry_timestamp_seconds": (
        "gauge",
        "When a certificate file in use expires, in Unix seconds (the earliest in the file).",
    ),
    # [relay] workers: the other metrics are the workers' added up.
    "relay_worker_up": ("gauge", "1 if the worker process runs and answered, else 0."),
    "relay_worker_restarts_total": (
        "counter",
        "Times the parent started a worker again after it died.",
    ),
}

Sample = tuple[str, Mapping[str, str], float]


def _samples(doc: Mapping[str, Any]) -> Iterator[Sample]:
    yield "relay_start_time_seconds", {}, doc["started"]
    for name, entry in doc["inputs"].items():
        labels = {"input": name}
        yield "relay_input_received_messages_total", labels, entry["received"]
        yield "relay_input_received_bytes_total", labels, entry["bytes"]
        for reason, value in entry["dropped"].items():
            yield "relay_input_dropped_messages_total", {**labels, "reason": reason}, value
        if "kernel" in entry["dropped"]:
            yield "relay_udp_kernel_drops_total", labels, entry["dropped"]["kernel"]
        for reason, value in entry.get("proxy_refused", {}).items():
            labels_reason = {**labels, "reason": reason}
            yield "relay_input_proxy_refused_connections_total", labels_reason, value
        if "proxy_health_checks" in entry:
            yield "relay_input_proxy_health_checks_total", labels, entry["proxy_health_checks"]
        for reason, value in entry["tls_failures"].items():
            endpoint = {"endpoint": f"input.{name}", "reason": reason}
            yield "relay_tls_failures_total", endpoint, value
    for name, entry in doc["outputs"].items():
        labels = {"output": name}
        yield "relay_output_received_messages_total", labels, entry["received"]
        yield "relay_output_delivered_messages_total", labels, entry["delivered"]
        yield "relay_output_delivered_bytes_total", labels, entry["delivered_bytes"]
        for reason, value in entry["dropped"].items():
            yield "relay_output_dropped_messages_total", {**labels, "reason": reason}, value
        for place, queued in entry["queued"].items():
            where = {**labels, "place": place}
            yield "relay_spool_messages", where, queued["messages"]
            yield "relay_spool_bytes", where, queued["bytes"]
        yield "relay_spool_oldest_age_seconds", labels, entry["oldest_age"] or 0.0
        for target in entry["upstream"]["targets"]:
            where = {**labels, "target": target["url"]}
            yield "relay_output_up", where, 1 if target["up"] else 0
            yield "relay_output_connected", where, 1 if target["connected"] else 0
        for reason, value in entry["tls_failures"].items():
            endpoint = {"endpoint": f"output.{name}", "reason": reason}
            yield "relay_tls_failures_total", endpoint, value
    for file, cert in doc["certificates"].items():
        yield "relay_certificate_expiry_timestamp_seconds", {"file": file}, cert["not_after"]
    for worker in doc.get("workers", ()):
        labels = {"worker": str(worker["index"])}
        yield "relay_worker_up", labels, 1 if worker["answered"] else 0
        yield "relay_worker_restarts_total", labels, worker["restarts"]


def _escape(value: str) -> str:
    """A label value as the text format wants it: \\, " and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def exposition(doc: Mapping[str, Any]) -> str:
    """The text format 0.0.4: each metric's HELP and TYPE, then its samples."""
    grouped: dict[str, list[str]] = {name: [] for name in METRICS}
    for name, labels, value in _samples(doc):
        shown = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        shown = f"{{{shown}}}" if shown else ""
        grouped[name].append(f"{name}{shown} {_number(value)}")
    lines: list[str] = []
    for name, samples in grouped.items():
        if not samples:
            continue
        kind, text = METRICS[name]
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + "\n"


def _response(status: str, body: bytes, content_type: str, *, head: bool = False) -> bytes:
    header = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return header if head else header + body


def _headers_end(request: bytes) -> bool:
    return b"\r\n\r\n" in request or b"\n\n" in request


def _error(status: str) -> bytes:
    return _response(status, f"{status}\n".encode(), "text/plain; charset=utf-8")


class MetricsServer:
    """The HTTP listener at ``[relay] metrics``; ``document`` builds the status."""

    def __init__(
        self,
        host: str,
        port: int,
        document: Command,
        counters: Counters,
    ) -> None:
        self.host = host
        self.port = port
        self.document = document
        self.counters = counters
        self.listeners: list[trio.SocketListener] = []
        self._clients = Clients("metrics listener", self._answer, counters)

    @property
    def url(self) -> str:
        if self.listeners:
            host, port = self.listeners[0].socket.getsockname()[:2]
            return f"http://{host_port(host, port)}/metrics"
        return f"http://{host_port(self.host, self.port)}/metrics"

    async def open(self) -> None:
        try:
            self.listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise StartupError(
                f"cannot serve metrics on {host_port(self.host, self.port)}: {exc.strerror or exc}"
            ) from None

    async def aclose(self) -> None:
        for listener in self.listeners:
            await listener.aclose()

    async def serve(self) -> None:
        """Answer scrapes until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                for listener in self.listeners:
                    nursery.start_soon(self._clients.accept, listener, nursery)
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def _answer(self, stream: trio.SocketStream) -> bytes:
        request, too_long = await read_request(stream, _headers_end, MAX_REQUEST)
        if too_long:
            self.counters.add("bad_requests")
            return _error("431 Request Header Fields Too Large")
        if not request:  # connected and closed: nothing to answer
            self.counters.add("bad_requests")
            return b""
        line = request.split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.counters.add("bad_requests")
            return _error("400 Bad Request")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self.counters.add("bad_requests")
            return _error("405 Method Not Allowed")
        if target not in (b"/metrics", b"/"):
            self.counters.add("bad_requests")
            return _error("404 Not Found")
        self.counters.add("requests")
        try:
            body = exposition(await answer(self.document)).encode()
        except Exception:  # a bug: this scrape fails, the relay goes on
            log.exception("relay: building the metrics failed")
            return _error("500 Internal Server Error")
        return _response("200 OK", body, CONTENT_TYPE, head=method == b"HEAD")
