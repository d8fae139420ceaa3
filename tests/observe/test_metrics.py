"""relay/observe/metrics.py: the text format, and the HTTP listener's limits."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from relay.observe import clients, metrics
from relay.stats import Counters


def document() -> dict[str, Any]:
    """A status document with awkward names (quote, backslash, newline)."""
    return {
        "started": 1700000000.5,
        "inputs": {
            "udp": {
                "received": 7,
                "bytes": 700,
                "dropped": {"oversize": 1, "rate_limited": 0, "kernel": 3},
                "tls_failures": {},
            },
        },
        "outputs": {
            'a"b\\c': {
                "received": 10,
                "delivered": 6,
                "delivered_bytes": 600,
                "dropped": {"drop_oldest": 2},
                "queued": {
                    "memory": {"messages": 1, "bytes": 100},
                    "disk": {"messages": 1, "bytes": 4096},
                },
                "oldest_age": 1.25,
                "upstream": {"targets": [{"url": "tcp://c:514", "up": True, "connected": True}]},
                "tls_failures": {"unknown_ca": 4},
            },
        },
        "certificates": {"/etc/relay/x\ny.pem": {"not_after": 1800000000.0}},
    }


def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_the_text_format_parses_with_the_names_the_issue_lists() -> None:
    text = metrics.exposition(document())
    samples = parsed(text)
    out = 'a"b\\c'
    assert samples[("relay_input_received_messages_total", (("input", "udp"),))] == 7
    assert samples[("relay_input_received_bytes_total", (("input", "udp"),))] == 700
    assert samples[("relay_udp_kernel_drops_total", (("input", "udp"),))] == 3
    assert samples[("relay_output_delivered_messages_total", (("output", out),))] == 6
    key = ("relay_output_dropped_messages_total", (("output", out), ("reason", "drop_oldest")))
    assert samples[key] == 2
    assert samples[("relay_spool_messages", (("output", out), ("place", "disk")))] == 1
    assert samples[("relay_spool_bytes", (("output", out), ("place", "disk")))] == 4096
    assert samples[("relay_spool_oldest_age_seconds", (("output", out),))] == 1.25
    assert samples[("relay_output_up", (("output", out), ("target", "tcp://c:514")))] == 1
    tls = ("relay_tls_failures_total", (("endpoint", f"output.{out}"), ("reason", "unknown_ca")))
    assert samples[tls] == 4
    cert = ("relay_certificate_expiry_timestamp_seconds", (("file", "/etc/relay/x\ny.pem"),))
    assert samples[cert] == 1800000000.0
    assert "# TYPE relay_spool_messages gauge\n" in text
    assert "# TYPE relay_output_delivered_messages_total counter\n" in text
    assert text.endswith("\n")


async def serve(doc: Any = document) -> tuple[metrics.MetricsServer, int]:
    counters = Counters("metrics", "m", clients.COUNTERS)
    server = metrics.MetricsServer("127.0.0.1", 0, doc, counters)
    await server.open()
    return server, server.listeners[0].socket.getsockname()[1]


async def exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
        (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", b"200"),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", b"200"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET /other HTTP/1.1\r\n\r\n", b"404"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400"),
        (b"GET " + b"a" * 10000, b"431"),
    ],
)
async def test_answers(request_bytes: bytes, status: bytes) -> None:
    server, port = await serve()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        answer = await exchange(port, request_bytes)
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:100]
    if status == b"200" and not request_bytes.startswith(b"HEAD"):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
        assert parsed(body.decode())


async def test_a_silent_client_is_cut_off_and_others_still_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """MAX_CLIENTS connections that send nothing: more are refused, all are
    closed after REQUEST_TIMEOUT, and a scrape then works."""
    server, port = await serve()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        silent = [
            await trio.open_tcp_stream("127.0.0.1", port) for _ in range(clients.MAX_CLIENTS + 2)
        ]
        for stream in silent:  # each is closed: the refused at once, the rest at the timeout
            with trio.fail_after(clients.REQUEST_TIMEOUT + 1):
                assert await stream.receive_some() == b""
            await stream.aclose()
        answer = await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 200")
    assert server.counters["timeouts"] == clients.MAX_CLIENTS
    assert server.counters["refused"] == 2


async def test_a_failing_document_is_a_500_not_a_stop() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("a bug")

    server, port = await serve(broken)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        answer = await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert (await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500")
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 500")
