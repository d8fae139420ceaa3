"""relay/observe/status.py: the document adds up, in process."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from relay import app, config
from relay.observe import status
from relay.protocol.framing import encode_octet_counted
from tests.waiting import await_until


def _config(text: str) -> config.Config:
    return config.loads(text.replace("\n        ", "\n"))


async def test_upstream_down_since_and_back(tmp_path: Path) -> None:
    """An output whose target refuses: down, since when, why; the table says so."""
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))  # bound, never listening: refused
    port = refusing.getsockname()[1]
    cfg = _config(
        f"""
        [relay]
        state_dir = "{tmp_path}"
        [input.t]
        url = "tcp://127.0.0.1:0"
        [output.c]
        url = "tcp://127.0.0.1:{port}"
        retry_max = 0.2
    """
    )
    relay = app.Relay(cfg)
    await relay.open()
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(relay.run)
        stream = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit(":", 1)[1]))
        await stream.send_all(encode_octet_counted([b"<13>seq=1"]))
        doc = await await_until(lambda: relay.status() if relay.outputs[0].last_error else {}, 10)
        nursery.cancel_scope.cancel()
    await stream.aclose()
    refusing.close()
    up = doc["outputs"]["c"]["upstream"]
    assert up["state"] == "down" and up["connected"] == []
    assert "refused" in up["last_error"]
    assert doc["started"] <= up["down_since"] <= doc["time"]
    assert up["targets"][0]["up"] is False
    line = status.log_lines(doc)[0]
    assert line.startswith("output c: received 1, delivered 0, dropped 0, queued 1 in memory")
    assert "upstream down " in line and "refused" in line


def test_spans_and_sizes() -> None:
    assert [status.span(s) for s in (0.25, 42, 312, 11040, 183600)] == [
        "0.2s",
        "42s",
        "5m12s",
        "3h04m",
        "2d03h",
    ]
    assert [status.size(n) for n in (512, 3174, 60817408)] == ["512 B", "3.1 KiB", "58.0 MiB"]
