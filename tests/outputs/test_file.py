"""relay/outputs/file.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from relay.config import Endpoint, OutputConfig
from relay.message import Batch
from relay.outputs import delivery
from relay.outputs.file import FileOutput
from relay.spool.spool import memory_spool
from relay.stats import Counters


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
