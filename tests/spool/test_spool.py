"""relay/spool/spool.py: memory first, disk behind it, FIFO across both."""

from __future__ import annotations

import errno
import logging
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from relay.message import Batch
from relay.spool import segment
from relay.spool import spool as spools
from relay.spool.spool import Admission, Durability, OnFull, Spool, SpoolSettings, memory_spool
from relay.stats import Counters

PER_BATCH = 10


def batch(n: int) -> Batch:
    """Batch number ``n``: messages seq=n*10 .. n*10+9."""
    return Batch(
        [b"<13>seq=%d" % (n * PER_BATCH + i) for i in range(PER_BATCH)],
        received=float(n),
        peer="10.0.0.1:514",
        input="test",
    )


def make(directory: Path | None, **settings: Any) -> Spool:
    values: dict[str, Any] = {
        "max_messages": 50,
        "max_bytes": 1 << 20,
        "disk_max_bytes": 1 << 26,
    }
    values.update(settings)
    return Spool(
        "t",
        SpoolSettings(**values),
        Counters("spool", "t", spools.COUNTERS),
        directory,
    )


async def drain(spool: Spool, limit: int | None = None) -> list[int]:
    """Take and ack batches until the spool is empty (or ``limit`` messages)."""
    seqs: list[int] = []
    while len(spool) and (limit is None or len(seqs) < limit):
        with trio.fail_after(10):
            batches = await spool.wait_batches(1 << 16)
        for b in batches:
            seqs += [int(m.split(b"seq=")[1]) for m in b.messages]
        spool.ack(len(batches))
    return seqs


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


# -- memory only ------------------------------------------------------------


async def test_memory_fifo_peek_ack_and_bound() -> None:
    spool = memory_spool(max_messages=30)
    for n in range(3):
        assert spool.put_nowait(batch(n)) is Admission.QUEUED
    assert spool.put_nowait(batch(3)) is Admission.FULL  # 30 messages: full
    assert len(spool) == 30
    assert await drain(spool) == list(range(30))


async def test_put_waits_for_room_when_blocking() -> None:
    spool = memory_spool(max_messages=10)
    spool.put_nowait(batch(0))
    done = trio.Event()

    async def producer() -> None:
        await spool.put(batch(1))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # back-pressure
        batches = await spool.wait_batches(1 << 20)
        spool.ack(len(batches))
        await done.wait()
    assert await drain(spool) == list(range(10, 20))


@pytest.mark.parametrize("policy", [OnFull.DROP_NEWEST, OnFull.DROP_OLDEST])
async def test_memory_only_drop_policies(policy: OnFull) -> None:
    spool = memory_spool(max_messages=30, on_full=policy)
    for n in range(6):
        assert spool.put_nowait(batch(n)) is not Admission.FULL
    got = await drain(spool)
    if policy is OnFull.DROP_NEWEST:
        assert got == list(range(30))
        assert spool.counters["dropped_newest"] == 30
    else:
        assert got == list(range(30, 60))
        assert spool.counters["dropped_oldest"] == 30


async def test_drop_oldest_never_drops_what_the_output_holds() -> None:
    spool = memory_spool(max_messages=20, on_full=OnFull.DROP_OLDEST)
    spool.put_nowait(batch(0))
    spool.put_nowait(batch(1))
    held = await spool.wait_batches(1)  # the output is writing batch 0
    assert held[0].messages[0] == b"<13>seq=0"
    spool.put_nowait(batch(2))  # full: drops batch 1, not batch 0
    spool.ack(1)
    assert await drain(spool) == list(range(20, 30))
    assert spool.counters["dropped_oldest"] == 10


async def test_the_memory_budget_bounds_what_the_batches_take_not_only_their_bytes() -> None:
    """queue_max_bytes bounds the memory the queued batches take: with 90-byte
    messages, one object each, that is half as much again as their bytes."""
    budget = 1 << 20
    spool = memory_spool(max_messages=10**9, max_bytes=budget)
    pad = b"x" * 62
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        n = 0
        while True:
            # The messages as an input makes them: each a bytes object of its own.
            messages = [b"<13>1 - host app - - - seq=%d %s" % (n + i, pad) for i in range(100)]
            n += 100
            if spool.put_nowait(Batch(messages, received=0.0)) is Admission.FULL:
                break
        del messages
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    nbytes = spool.statistics().memory_bytes
    # Within the budget, less than one more batch (it takes a batch while below).
    assert held <= budget + 100 * 200, (held, nbytes)
    assert nbytes > budget // 2  # and it does fill: 90 bytes a message take about 146


# -- spilling to disk ---------------------------------------------------------


async def test_spill_keeps_order_and_deletes_drained_segments(tmp_path: Path) -> None:
    spool = make(tmp_path, max_messages=50)
    await spool.open()
    for n in range(500):
        assert spool.put_nowait(batch(n)) is Admission.QUEUED
    stats = spool.statistics()
    assert stats.memory_messages == 50 and stats.disk_messages == 4950
    assert segments(tmp_path)
    # New batches keep going to disk while older ones wait there (FIFO).
    got = await drain(spool, limit=1000)
    spool.put_nowait(batch(500))
    got += await drain(spool)
    assert got == list(range(5010))
    assert segments(tmp_path) == []
    assert spool.counters["written_to_disk"] == 4960


async def test_save_at_stop_and_replay_first(tmp_path: Path) -> None:
    spool = make(tmp_path, max_messages=50)
    await spool.open()
    for n in range(100):
        spool.put_nowait(batch(n))
    first = await drain(spool, limit=120)  # some from memory, some read back from disk
    assert spool.save() == 0
    again = make(tmp_path, max_messages=50)
    await again.open()
    assert len(again) == 1000 - len(first)
    for n in range(100, 110):  # new traffic queues behind the replay
        again.put_nowait(batch(n))
    rest = await drain(again)
    assert first + rest == list(range(1100))
    assert segments(tmp_path) == []


async def test_save_at_stop_writes_memory_in_chunks(tmp_path: Path) -> None:
    """What memory holds is written a chunk at a time: a stop must not need
    two more copies of queue_max_bytes (the records, then their join)."""
    big = [
        Batch([b"x" * 65_000 + b" seq=%d" % n], received=float(n), peer="p", input="i")
        for n in range(128)
    ]
    spool = make(tmp_path, max_messages=1000, max_bytes=16 << 20)
    await spool.open()
    for b in big:
        assert spool.put_nowait(b) is Admission.QUEUED
    tracemalloc.start()
    try:
        assert spool.save() == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * spools.SAVE_CHUNK + (1 << 20), peak
    again = make(tmp_path, max_messages=1000, max_bytes=16 << 20)
    await again.open()
    assert await drain(again) == list(range(128))


async def test_save_that_fails_part_way_leaves_no_partial_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills after the first chunk: nothing is half saved (the next
    start must not replay what the stop counted as lost)."""
    spool = make(tmp_path, max_messages=1000, max_bytes=16 << 20)
    await spool.open()
    for _ in range(32):
        spool.put_nowait(Batch([b"x" * 65_000], received=0.0))
    append = segment.SegmentWriter.append
    calls: list[int] = []

    def fill_up(self: segment.SegmentWriter, payloads: list[bytes]) -> list[int]:
        calls.append(len(payloads))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return append(self, payloads)

    monkeypatch.setattr(segment.SegmentWriter, "append", fill_up)
    assert spool.save() == 32
    assert spool.counters["disk_errors"] == 1
    assert segments(tmp_path) == []


@pytest.mark.parametrize("durability", [Durability.DISK, Durability.FSYNC])
async def test_write_through_survives_a_crash(tmp_path: Path, durability: Durability) -> None:
    """No save(): as after kill -9. Everything not acked comes back, in order;
    at most what was acked since the last checkpoint comes back twice."""
    spool = make(tmp_path, durability=durability)
    await spool.open()
    for n in range(200):
        assert spool.put_nowait(batch(n)) is Admission.QUEUED
    first = await drain(spool, limit=500)
    spool.sync()  # the checkpoint the background task makes every second
    more = await drain(spool, limit=100)  # acked after the checkpoint: may repeat
    again = make(tmp_path, durability=durability)
    await again.open()
    rest = await drain(again)
    assert first == list(range(len(first)))
    assert rest[-1] == 1999
    assert sorted(set(first + more + rest)) == list(range(2000))
    assert len(first) + len(more) + len(rest) - 2000 <= len(more)


async def test_memory_durability_crash_loses_only_memory(tmp_path: Path) -> None:
    spool = make(tmp_path, max_messages=50)
    await spool.open()
    for n in range(100):
        spool.put_nowait(batch(n))
    again = make(tmp_path)
    await again.open()  # no save: memory (seq 0-49) is gone, disk survived
    assert await drain(again) == list(range(50, 1000))


# -- the disk budget ----------------------------------------------------------


@pytest.mark.parametrize("policy", list(OnFull))
async def test_disk_budget_policies(tmp_path: Path, policy: OnFull) -> None:
    spool = make(tmp_path, max_messages=10, disk_max_bytes=200_000, on_full=policy)
    await spool.open()
    results = [spool.put_nowait(batch(n)) for n in range(3000)]
    stats = spool.statistics()
    assert stats.disk_bytes <= 200_000
    assert stats.memory_messages <= 10
    queued = len(spool)
    dropped = spool.counters["dropped_newest"] + spool.counters["dropped_oldest"]
    refused = results.count(Admission.FULL) * PER_BATCH
    assert queued + dropped + refused == 30_000  # every message accounted for
    got = await drain(spool)
    assert len(got) == queued
    if policy is OnFull.BLOCK:
        assert got == list(range(queued)) and dropped == 0
    elif policy is OnFull.DROP_NEWEST:
        assert got == list(range(queued)) and refused == 0
    else:
        assert got[-1] == 29_999 and refused == 0  # the newest survive
        assert got == sorted(got)


async def test_damaged_segment_is_quarantined_and_counted(tmp_path: Path) -> None:
    spool = make(tmp_path, durability=Durability.DISK)
    await spool.open()
    for n in range(50):
        spool.put_nowait(batch(n))
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle
    seg.write_bytes(bytes(data))
    again = make(tmp_path)
    await again.open()
    got = await drain(again)
    assert 0 < len(got) < 500
    assert len(got) % PER_BATCH == 0  # whole batches: the damaged one is missing
    assert again.counters["corrupt_records"] >= 1
    assert list(tmp_path.glob("*.bad"))


async def test_drop_oldest_on_disk_never_loses_what_memory_read_from_it(tmp_path: Path) -> None:
    """drop_oldest deletes a segment whose first records memory already holds:
    those batches are saved at stop all the same (they were queued, not dropped)."""

    def big(n: int) -> Batch:
        return Batch([b"<13>" + b"x" * 1000 + b" seq=%d" % n], received=1.0)

    settings = {"max_messages": 10, "disk_max_bytes": 256 * 1024, "on_full": OnFull.DROP_OLDEST}
    spool = make(tmp_path, **settings)
    await spool.open()
    for n in range(150):
        spool.put_nowait(big(n))
    first = await drain(spool, limit=10)  # the batches that went straight to memory
    await spool.wait_batches(1 << 30)  # memory now holds batches read from segment 0
    for n in range(150, 550):  # the disk budget is spent: segment 0 is dropped
        spool.put_nowait(big(n))
    assert spool.counters["dropped_oldest"] > 0
    queued = len(spool)
    assert spool.save() == 0
    again = make(tmp_path, **settings)
    await again.open()
    assert len(again) == queued  # what was queued at the stop is there after it
    rest = await drain(again)
    assert len(first) + len(rest) + spool.counters["dropped_oldest"] == 550


async def test_wait_durable_waits_for_the_group_fsync(tmp_path: Path) -> None:
    spool = make(tmp_path, durability=Durability.FSYNC, fsync_interval=0.05)
    await spool.open()
    spool.put_nowait(batch(0))
    done = trio.Event()

    async def acknowledge() -> None:
        await spool.wait_durable()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acknowledge)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # not on disk yet: no acknowledgement
        spool.sync()  # what the spool's background task does every fsync_interval
        await done.wait()
    await spool.wait_durable()  # nothing written since: returns at once


# -- the file system's free space ---------------------------------------------

KiB = 1024


def wide(n: int) -> Batch:
    """Batch ``n`` of 10 messages of about 1 KiB: seq=n*10 .. n*10+9."""
    return Batch(
        [b"<13>" + b"x" * 1000 + b" seq=%d" % (n * PER_BATCH + i) for i in range(PER_BATCH)],
        received=float(n),
    )


def seqs_of(result: list[Batch]) -> list[int]:
    return [int(m.split(b"seq=")[1]) for b in result for m in b.messages]


class SmallDisk:
    """A file system of ``size`` bytes holding one directory: free space is
    ``size`` less what the files in it hold (what statvfs would say)."""

    def __init__(self, directory: Path, size: int) -> None:
        self.directory = directory
        self.size = size

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def __call__(self, directory: Path) -> int:
        assert directory == self.directory
        return max(0, self.size - self.used())


def on_small_disk(directory: Path, disk: SmallDisk, **settings: Any) -> Spool:
    values: dict[str, Any] = {
        "max_messages": 100,
        "max_bytes": 100 * KiB,  # 10 wide batches
        "disk_max_bytes": 1 << 30,  # far more than the disk holds
        "disk_reserve": 64 * KiB,
    }
    values.update(settings)
    return Spool(
        "t",
        SpoolSettings(**values),
        Counters("spool", "t", spools.COUNTERS),
        directory,
        free_space=disk,
    )


@pytest.mark.parametrize("durability", [Durability.MEMORY, Durability.DISK])
@pytest.mark.parametrize("policy", list(OnFull))
async def test_a_full_file_system_is_a_spent_disk_budget_and_the_stop_still_saves(
    tmp_path: Path, policy: OnFull, durability: Durability, caplog: pytest.LogCaptureFixture
) -> None:
    """disk_max_bytes is 1 GiB, the file system 1 MiB: the spool stops taking
    on disk while there is room left to save memory at a stop, applies on_full,
    says so once, and the stop saves everything it holds."""
    disk = SmallDisk(tmp_path, 1024 * KiB)
    spool = on_small_disk(tmp_path, disk, on_full=policy, durability=durability)
    await spool.open()
    results = [spool.put_nowait(wide(n)) for n in range(300)]  # 3 MiB
    refused = results.count(Admission.FULL) * PER_BATCH
    dropped = spool.counters["dropped_newest"] + spool.counters["dropped_oldest"]
    queued = len(spool)
    assert queued + dropped + refused == 3000  # every message accounted for
    assert queued > 500  # the disk was used, most of the way
    if policy is OnFull.BLOCK:
        assert refused and not dropped
    elif policy is OnFull.DROP_NEWEST:
        assert spool.counters["dropped_newest"] and not refused
    else:
        assert spool.counters["dropped_oldest"]
    assert disk.used() <= disk.size - 64 * KiB - spool.statistics().memory_bytes
    assert spool.counters["disk_errors"] == 0  # refused before any write failed
    if policy is OnFull.DROP_OLDEST:  # never refuses: drops whole segments, each said
        assert "no room on the file system of" in caplog.text
    else:
        assert caplog.text.count("taking nothing more on disk") == 1
    assert spool.save() == 0
    assert disk.used() <= disk.size  # the memory part fitted
    again = on_small_disk(tmp_path, SmallDisk(tmp_path, 1 << 30))
    await again.open()
    assert len(again) == queued
    got = await drain(again)
    assert len(got) == queued and got == sorted(got)
    if policy is not OnFull.DROP_OLDEST:
        assert got == list(range(queued))


async def test_taking_again_once_there_is_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "relay.spool")
    disk = SmallDisk(tmp_path, 1024 * KiB)
    spool = on_small_disk(tmp_path, disk)
    await spool.open()
    results = [spool.put_nowait(wide(n)) for n in range(200)]
    first_refused = results.index(Admission.FULL)
    assert set(results[first_refused:]) == {Admission.FULL}
    disk.size += 512 * KiB  # less than RESUME_MARGIN more than one batch needs
    spool.refresh_space()
    assert spool.put_nowait(wide(first_refused)) is Admission.FULL
    disk.size += 1024 * KiB
    spool.refresh_space()
    assert spool.put_nowait(wide(first_refused)) is Admission.QUEUED
    assert caplog.text.count("taking nothing more on disk") == 1
    assert caplog.text.count("taking on disk again") == 1
    assert await drain(spool) == list(range((first_refused + 1) * PER_BATCH))


async def test_block_waits_for_room_on_disk(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """put() under on_full = block waits while the disk is short of room and
    goes on when the free space, read again every second, says there is."""
    disk = SmallDisk(tmp_path, 512 * KiB)
    spool = on_small_disk(tmp_path, disk)
    await spool.open()
    n = 0
    while spool.put_nowait(wide(n)) is Admission.QUEUED:
        n += 1
    done = trio.Event()

    async def producer() -> None:
        await spool.put(wide(n))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spool.run)
        nursery.start_soon(producer)
        await trio.sleep(5)
        assert not done.is_set()  # held back: no room
        disk.size += 4096 * KiB  # another process freed the disk
        with trio.fail_after(2):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert await drain(spool) == list(range((n + 1) * PER_BATCH))


@pytest.mark.parametrize("durability", [Durability.MEMORY, Durability.DISK])
async def test_enospc_anyway_refuses_like_a_full_disk_and_logs_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    durability: Durability,
) -> None:
    """Another process filled the disk between two readings: the write fails
    with ENOSPC. The batch is refused (on_full), memory keeps what it holds,
    one line says so, and the disk is not tried again until read again."""
    spool = make(tmp_path, max_messages=50, durability=durability)
    await spool.open()
    for n in range(60):
        assert spool.put_nowait(batch(n)) is Admission.QUEUED
    full = True
    real_write_all = segment._write_all

    def write_all(fd: int, data: bytes) -> None:
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(fd, data)

    monkeypatch.setattr(segment, "_write_all", write_all)
    held = len(spool)
    assert [spool.put_nowait(batch(n)) for n in range(60, 160)] == [Admission.FULL] * 100
    assert len(spool) == held
    assert spool.counters["disk_errors"] == 1  # not tried again while refusing
    assert caplog.text.count("No space left on device") == 1
    full = False
    spool.refresh_space()
    assert spool.put_nowait(batch(60)) is Admission.QUEUED
    assert spool.save() == 0
    again = make(tmp_path, max_messages=50)
    await again.open()
    assert await drain(again) == list(range(610))


async def test_a_new_segment_that_cannot_be_created_does_not_break_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = make(
        tmp_path,
        max_messages=10,
        disk_max_bytes=1 << 20,  # 128 KiB segments
        durability=Durability.FSYNC,
        fsync_interval=1.0,
    )
    await spool.open()
    real_create = segment.SegmentWriter.create
    fail = True

    def create(directory: Path, seg_id: int) -> segment.SegmentWriter:
        if seg_id > 0 and fail:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_create(directory, seg_id)

    monkeypatch.setattr(segment.SegmentWriter, "create", create)
    results = [spool.put_nowait(wide(n)) for n in range(30)]
    assert Admission.FULL in results  # the second segment could not be made
    fail = False
    assert spool.put_nowait(wide(30)) is Admission.QUEUED


def test_refuses_says_what_put_nowait_would_answer_full(tmp_path: Path) -> None:
    """Memory full and the disk budget spent, with on_full = block: refused."""
    spool = make(tmp_path, max_messages=2, disk_max_bytes=1 << 20)
    spool.refresh_space()  # the runtime does it every second
    small = Batch([b"<13>seq=1"] * 2, received=0.0, peer="p", input="i")
    assert not spool.refuses(small)
    assert spool.put_nowait(small) == Admission.QUEUED  # memory now full
    assert not spool.refuses(small)  # the disk has room
    assert spool.put_nowait(small) == Admission.QUEUED
    big = Batch([b"x" * 4096] * 300, received=0.0, peer="p", input="i")  # over 1 MiB
    assert spool.refuses(big)
    assert spool.put_nowait(big) == Admission.FULL
    assert not make(None, max_messages=2, on_full=OnFull.DROP_OLDEST).refuses(big)
