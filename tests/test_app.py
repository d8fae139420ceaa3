"""relay/app.py in process: the counters add up."""

from __future__ import annotations

import logging
import os
import signal
import socket
from pathlib import Path

import pytest
import trio

from relay import app, config
from relay.inputs import limit
from relay.protocol.framing import encode_octet_counted
from tests.waiting import await_until


async def test_received_equals_delivered_plus_dropped_plus_queued(tmp_path: Path) -> None:
    """When traffic stops: for each output, what the inputs received equals what it
    delivered, plus what it dropped (by reason), plus what is still queued."""
    sink = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    sink_port = sink.socket.getsockname()[1]
    cfg = config.loads(
        f"""
        [relay]
        state_dir = "{tmp_path}"
        [input.t]
        url = "tcp://127.0.0.1:0"
        [output.live]
        url = "tcp://127.0.0.1:{sink_port}"
        [output.dropping]
        url = "file://{tmp_path}/never-written"
        queue_max_messages = 100
        disk_max_bytes = 0
        on_full = "drop_newest"
    """.replace("\n        ", "\n")
    )
    relay = app.Relay(cfg)
    await relay.open()
    dropping = relay.outputs[1]
    await dropping.aclose()
    dropping.deliver = _never  # type: ignore[method-assign]  # a stuck file output

    async def read_sink() -> None:
        conn = await sink.accept()
        async with conn:
            while await conn.receive_some(1 << 16):
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_sink)
        (address,) = await nursery.start(relay.run)
        stream = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit(":", 1)[1]))
        await stream.send_all(
            encode_octet_counted([b"<13>seq=%d " % i + b"x" * 200 for i in range(5000)])
        )
        await stream.aclose()
        received = relay.stats._components[("input", "t")]
        await await_until(
            lambda: received["received"] >= 5000 and not len(relay.outputs[0].spool), 10
        )
        snapshot = relay.stats.snapshot()
        nursery.cancel_scope.cancel()
    total = snapshot["input"]["t"]["received"]
    assert total == 5000
    for output in relay.outputs:
        out = snapshot["output"][output.name]
        spool = snapshot["spool"][output.name]
        dropped = (
            out["dropped_queue_full"]
            + out["dropped_unreachable"]
            + spool["dropped_newest"]
            + spool["dropped_oldest"]
        )
        assert out["delivered"] + dropped + len(output.spool) == total, (output.name, out, spool)
    assert snapshot["spool"]["dropping"]["dropped_newest"] > 0
    await sink.aclose()


async def _never(batches: object) -> None:
    await trio.sleep_forever()


async def test_an_error_in_the_relays_own_task_saves_every_queued_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With durability "memory" and the collector down, an error the relay does
    not handle still leaves every queued message on disk, and says how many."""
    caplog.set_level(logging.INFO, logger="relay")
    down = socket.socket()
    down.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    cfg = config.loads(
        f"""
        [relay]
        state_dir = "{tmp_path}"
        [input.t]
        url = "tcp://127.0.0.1:0"
        [output.central]
        url = "tcp://127.0.0.1:{down.getsockname()[1]}"
    """.replace("\n        ", "\n")
    )
    relay = app.Relay(cfg)
    await relay.open()

    def broken_reopen() -> None:
        raise RuntimeError("injected into the relay's own task")

    monkeypatch.setattr(relay, "reopen", broken_reopen)  # runs on SIGHUP
    with pytest.raises(Exception) as raised:  # trio may wrap it in an ExceptionGroup
        async with trio.open_nursery() as nursery:
            (address,) = await nursery.start(relay.run)
            stream = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit(":", 1)[1]))
            await stream.send_all(encode_octet_counted([b"<13>seq=%d" % i for i in range(1000)]))
            await await_until(lambda: len(relay.outputs[0].spool) == 1000, 10)
            assert relay.outputs[0].spool.statistics().memory_messages == 1000  # RAM only
            os.kill(os.getpid(), signal.SIGHUP)
            await trio.sleep_forever()  # ended by the error
    await stream.aclose()
    down.close()
    assert "RuntimeError: injected" in app._why(raised.value)
    assert "unexpected error (a bug in relay): RuntimeError: injected" in caplog.text
    assert "stopped with 1000 messages kept in the spools for the next start, 0 lost" in (
        caplog.text
    )
    assert relay._lock is not None
    os.close(relay._lock)  # as the process's exit would
    again = app.Relay(cfg)
    await again.open()
    spool = again.outputs[0].spool
    assert len(spool) == 1000
    with trio.fail_after(10):
        batches = await spool.wait_batches(1 << 40)  # read back from disk
    assert [m for b in batches for m in b.messages] == [b"<13>seq=%d" % i for i in range(1000)]
    await again.aclose_inputs()


def test_the_stage_is_counted_only_when_it_has_work(tmp_path: Path) -> None:
    """No filter: batches never enter the stage, and no 'router stage' line;
    with one, the stage and each redacting output have their counters."""
    base = f'[relay]\nstate_dir = "{tmp_path}"\n[input.u]\nurl = "udp://127.0.0.1:0"\n'
    plain = app.Relay(config.loads(base + '[output.o]\nurl = "file:-"\n'))
    assert plain.router.stage is None
    assert "router" not in plain.stats.snapshot()
    filtered = app.Relay(
        config.loads(base + '[output.o]\nurl = "file:-"\nfilter = "auth.*"\nredact = ["ipv4"]\n')
    )
    assert filtered.router.stage is not None
    snapshot = filtered.stats.snapshot()
    assert snapshot["router"]["stage"] == {"unrouted": 0}
    assert snapshot["redaction"]["o"] == {"ipv4": 0}


async def test_a_reload_stops_what_served_a_removed_input(tmp_path: Path) -> None:
    """An input removed by a reload takes its rate limit's task with it (the
    task that logs its episodes once an interval), whether it was there at
    the start or added by an earlier reload."""
    head = (
        f'[relay]\nstate_dir = "{tmp_path}"\n[output.o]\nurl = "file://{tmp_path}/out"\n'
        '[input.kept]\nurl = "udp://127.0.0.1:0"\n'
    )
    limited = '[input.{name}]\nurl = "udp://127.0.0.1:0"\nrate_limit = {{ rate = 10 }}\n'
    texts = [
        head + limited.format(name="a"),
        head + limited.format(name="a") + limited.format(name="b"),
        head,
    ]
    relay = app.Relay(config.loads(texts[0]))
    relay.reread = lambda: config.loads(texts[0])
    await relay.open()

    def limit_tasks() -> set[str]:
        return {key.name for key in relay._tasks if isinstance(key, limit.InputLimit)}

    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        assert limit_tasks() == {"a"}
        texts.pop(0)
        await relay.reload()
        assert limit_tasks() == {"a", "b"}
        texts.pop(0)
        await relay.reload()
        assert limit_tasks() == set()
        assert [i.config.name for i in relay.inputs] == ["kept"]
        nursery.cancel_scope.cancel()
