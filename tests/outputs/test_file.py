"""relay/outputs/file.py."""

from __future__ import annotations

import base64
import errno
import json
import os
import socket
from pathlib import Path

import pytest
import trio

from relay.config import Endpoint, FileSettings, OutputConfig, split_path_template
from relay.errors import StartupError
from relay.jsonsettings import JsonSettings
from relay.message import Batch
from relay.outputs import delivery
from relay.outputs.file import FileOutput, safe_component
from relay.service import enrichment
from relay.spool.spool import memory_spool
from relay.stats import Counters
from tests.waiting import await_until


def make_output(path: Path, fmt: str = "lines") -> FileOutput:
    config = OutputConfig("f", Endpoint("file", path=str(path)), format=fmt, retry_max=0.05)
    return FileOutput(config, memory_spool(), Counters("output", "f", delivery.COUNTERS))


async def deliver_all(output: FileOutput, batches: list[Batch]) -> None:
    await output.open()
    for batch in batches:
        output.spool.put_nowait(batch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        with trio.fail_after(10):
            await output.spool.wait_empty()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("lines", b"<13>a\n<13>b\nc\n<13>d\n"), ("octet-counted", b"5 <13>a7 <13>b\nc5 <13>d")],
)
async def test_formats(tmp_path: Path, fmt: str, expected: bytes) -> None:
    out = tmp_path / "out.log"
    output = make_output(out, fmt)
    await deliver_all(
        output, [Batch([b"<13>a", b"<13>b\nc"], received=0), Batch([b"<13>d"], received=0)]
    )
    assert out.read_bytes() == expected
    assert output.counters["delivered"] == 3


async def test_a_write_that_fails_part_way_resumes_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full in the middle of a batch: the retry writes only the rest."""
    out = tmp_path / "out.log"
    real_write = os.write
    failures = iter([False, True])  # first call writes 10 bytes, the second fails

    def flaky_write(fd: int, data: bytes | memoryview) -> int:
        if next(failures, False):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data[:10]))

    monkeypatch.setattr(os, "write", flaky_write)
    output = make_output(out)
    messages = [b"<13>seq=%d" % i for i in range(20)]
    await deliver_all(output, [Batch(messages, received=0)])
    assert out.read_bytes() == b"".join(m + b"\n" for m in messages)
    assert output.counters["failures"] == 1
    assert output.last_error == ""


async def test_reopen_after_rotation(tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    output = make_output(out)
    await deliver_all(output, [Batch([b"one"], received=0)])
    out.rename(tmp_path / "out.log.1")
    output.reopen()
    output.spool.put_nowait(Batch([b"two"], received=0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        await output.spool.wait_empty()
        nursery.cancel_scope.cancel()
    assert (tmp_path / "out.log.1").read_bytes() == b"one\n"
    assert out.read_bytes() == b"two\n"


def make_settings_output(path: str, fmt: str = "lines", **settings: object) -> FileOutput:
    file = FileSettings(path=split_path_template(path), **settings)  # type: ignore[arg-type]
    config = OutputConfig("f", Endpoint("file", path=path), format=fmt, retry_max=0.05, file=file)
    return FileOutput(config, memory_spool(), Counters("output", "f", delivery.COUNTERS))


async def test_modes_and_owner_are_applied_at_creation(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.log"
    output = make_settings_output(str(path), file_mode=0o604, dir_mode=0o710, uid=65534, gid=65534)
    await deliver_all(output, [Batch([b"<13>x"], received=0)])
    assert path.read_bytes() == b"<13>x\n"
    info = path.stat()
    assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (0o604, 65534, 65534)
    assert (tmp_path / "a").stat().st_mode & 0o7777 == 0o710
    assert (tmp_path / "a" / "b").stat().st_mode & 0o7777 == 0o710
    # At creation only: an existing file keeps what it has.
    path.chmod(0o600)
    output = make_settings_output(str(path), file_mode=0o644)
    await deliver_all(output, [Batch([b"<13>y"], received=0)])
    assert path.stat().st_mode & 0o7777 == 0o600
    assert path.read_bytes() == b"<13>x\n<13>y\n"


async def test_no_directories_without_create_dirs(tmp_path: Path) -> None:
    output = make_settings_output(str(tmp_path / "missing" / "out.log"), create_dirs=False)
    with pytest.raises(StartupError, match="No such file or directory"):
        await output.open()


async def test_dynamic_paths_group_by_host_and_stay_in_their_directory(tmp_path: Path) -> None:
    output = make_settings_output(
        f"{tmp_path}/{{hostname}}/{{app_name}}-{{severity}}.log", "traditional", max_open_files=2
    )
    batch = Batch(
        [
            b"<11>Jan  5 10:11:12 web1 nginx: one",
            b"<14>Jan  5 10:11:12 web2 nginx[2]: two",
            b"<11>Jan  5 10:11:12 web1 nginx: three",
            b"<14>Jan  5 10:11:12 ..: dots",  # no hostname: the sender's address
            b"<14>Jan  5 10:11:12 web3 ..: app name '..'",
        ],
        received=0,
        peer="10.0.0.9:514",
    )
    await deliver_all(output, [batch])
    assert (tmp_path / "web1" / "nginx-err.log").read_bytes() == (
        b"Jan  5 10:11:12 web1 nginx: one\nJan  5 10:11:12 web1 nginx: three\n"
    )
    assert (tmp_path / "web2" / "nginx-info.log").read_bytes() == (
        b"Jan  5 10:11:12 web2 nginx[2]: two\n"
    )
    assert (tmp_path / "10.0.0.9" / "_-info.log").exists()
    assert (tmp_path / "web3" / "_-info.log").exists()
    assert len(output.files) <= 2  # the least recently used were closed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10.0.0.9", "web1", "web2", "web3"]


def test_placeholder_values_cannot_leave_the_directory() -> None:
    assert [safe_component(v) for v in ("..", ".", "", "a/b", "x\0y", "ok")] == [
        "_",
        "_",
        "_",
        "a_b",
        "x_y",
        "ok",
    ]


async def test_a_buffered_batch_is_acked_only_once_written(tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    output = make_settings_output(str(out), flush_interval=0.5, fsync=True)
    await output.open()
    output.spool.put_nowait(Batch([b"one"], received=0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        await await_until(lambda: output.window.batches == 1, 5)  # delivered, in flight
        assert out.read_bytes() == b""  # buffered: not written, not acked
        assert len(output.spool) == 1
        await await_until(lambda: out.read_bytes() == b"one\n", 5)
        with trio.fail_after(5):
            await output.spool.wait_empty()
        # At stop, what is buffered is written (and acked) first.
        output.spool.put_nowait(Batch([b"two"], received=0))
        await await_until(lambda: output.window.batches == 1, 5)
        nursery.cancel_scope.cancel()
    assert out.read_bytes() == b"one\ntwo\n"
    assert len(output.spool) == 0


# -- format = "json" -------------------------------------------------------------------


def make_json_output(path: str, settings: JsonSettings) -> FileOutput:
    file = FileSettings(path=split_path_template(path))
    config = OutputConfig(
        "f", Endpoint("file", path=path), format="json", retry_max=0.05, file=file, json=settings
    )
    return FileOutput(config, memory_spool(), Counters("output", "f", delivery.COUNTERS))


async def test_json_one_object_per_line_with_enrichment(tmp_path: Path) -> None:
    settings = JsonSettings(host_fields=("name",), labels=(("env", "prod"),), parse_message="app")
    output = make_json_output(str(tmp_path / "out.json"), settings)
    messages = [b"<13>1 - web1 app - - - seq=%d" % i for i in range(5)]
    messages.append(b'<14>Jan  5 10:11:12 web2 nginx[2]: {"seq": 5, "line\\nbreak": true}')
    batch = Batch(messages, received=1_764_600_000.25, peer="10.0.0.9:514", input="tcp")
    await deliver_all(output, [batch, Batch([b"seq=6 \xff"], received=0, creds=(7, 8, 9))])
    lines = (tmp_path / "out.json").read_bytes().split(b"\n")
    assert lines[-1] == b""  # every object ends in LF, and holds none
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["message"] for r in records[:5]] == [f"seq={i}" for i in range(5)]
    assert records[5]["app"] == {"seq": 5, "line\nbreak": True}
    assert records[6]["message_base64"] == base64.b64encode(b"seq=6 \xff").decode()
    assert [r["hostname"] for r in records] == ["web1"] * 5 + ["web2", None]
    assert all(r["host"] == {"name": socket.gethostname()} for r in records)
    assert all(r["labels"] == {"env": "prod"} for r in records)
    assert records[0]["received"] == "2025-12-01T14:40:00.250000Z"
    assert (records[0]["source"], records[0]["input"]) == ("10.0.0.9", "tcp")
    assert (records[6]["pid"], records[6]["uid"], records[6]["gid"]) == (7, 8, 9)
    assert output.counters["delivered"] == 7


async def test_json_by_hostname_keeps_each_object_with_its_message(tmp_path: Path) -> None:
    output = make_json_output(f"{tmp_path}/{{hostname}}.json", JsonSettings())
    messages = [b"<13>1 - web%d app - - - seq=%d" % (i % 3, i) for i in range(30)]
    await deliver_all(output, [Batch(messages, received=0)])
    for host in range(3):
        text = (tmp_path / f"web{host}.json").read_bytes()
        records = [json.loads(line) for line in text.splitlines()]
        assert [r["message"] for r in records] == [f"seq={i}" for i in range(host, 30, 3)]
        assert {r["hostname"] for r in records} == {f"web{host}"}


async def test_json_machine_id_missing_refuses_to_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(enrichment, "MACHINE_ID", tmp_path / "machine-id")
    output = make_json_output(str(tmp_path / "o.json"), JsonSettings(host_fields=("machine_id",)))
    with pytest.raises(StartupError, match=r"^output f: host_fields has machine_id but .*"):
        await output.open()
