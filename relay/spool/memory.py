"""The in-memory part of an output's queue: a bounded FIFO of batches.

Every output has its own spool, so one slow upstream never stalls another.
The output *peeks* at the head, writes it, and only then *acks* it: a batch
leaves the spool once it is safe, never before (the single commit point).

Bounds are in messages and in bytes (RAM is what runs out; a limit in
messages alone multiplies by the message size, rsyslog#3314). A batch is
admitted while the spool is below both bounds, so one batch may overshoot by
at most its own size; that keeps a single large batch from wedging an empty
spool.
"""

from __future__ import annotations

import collections
import dataclasses

import trio

from relay.message import Batch

# rsyslog's action queues default to 1,000 messages in memory, its main queue
# to 100,000. A relay node buffers more: 100,000 messages or 64 MiB, whichever
# comes first (about 2 minutes of a busy regional relay at 1,000 msg/s per
# host-group, and well under the RAM of a small VM).
DEFAULT_MAX_MESSAGES = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class SpoolStatistics:
    queued_messages: int
    queued_bytes: int
    queued_batches: int
    max_messages: int
    max_bytes: int
    oldest_received: float | None  # receive time of the oldest queued batch


class MemorySpool:
    """A bounded FIFO of batches with peek/ack delivery."""

    def __init__(
        self, *, max_messages: int = DEFAULT_MAX_MESSAGES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("spool bounds must be positive")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._batches: collections.deque[Batch] = collections.deque()
        self._messages = 0
        self._bytes = 0
        self._changed = trio.Event()  # set (and replaced) on every put and ack

    def __len__(self) -> int:
        """Messages queued."""
        return self._messages

    @property
    def full(self) -> bool:
        return self._messages >= self.max_messages or self._bytes >= self.max_bytes

    def put_nowait(self, batch: Batch) -> bool:
        """Queue ``batch`` if there is room; False (nothing queued) if full."""
        if self.full:
            return False
        self._batches.append(batch)
        self._messages += len(batch.messages)
        self._bytes += batch.nbytes
        self._notify()
        return True

    async def put(self, batch: Batch) -> None:
        """Queue ``batch``, waiting for room first (back-pressure)."""
        while not self.put_nowait(batch):
            await self._wait_changed()

    async def wait_batches(self, max_bytes: int) -> list[Batch]:
        """Wait until something is queued; return head batches up to ``max_bytes``.

        At least one batch is returned. They stay queued until :meth:`ack`.
        """
        while not self._batches:
            await self._wait_changed()
        return self.peek(max_bytes)

    def peek(self, max_bytes: int) -> list[Batch]:
        """Head batches up to ``max_bytes`` (at least one if any), left queued."""
        out: list[Batch] = []
        total = 0
        for batch in self._batches:
            if out and total + batch.nbytes > max_bytes:
                break
            out.append(batch)
            total += batch.nbytes
        return out

    def ack(self, count: int) -> None:
        """Remove the ``count`` head batches: they are delivered."""
        for _ in range(count):
            batch = self._batches.popleft()
            self._messages -= len(batch.messages)
            self._bytes -= batch.nbytes
        self._notify()

    def drain_nowait(self) -> list[Batch]:
        """Remove and return everything queued (for saving at shutdown)."""
        batches = list(self._batches)
        self._batches.clear()
        self._messages = self._bytes = 0
        self._notify()
        return batches

    async def wait_empty(self) -> None:
        while self._batches:
            await self._wait_changed()

    def statistics(self) -> SpoolStatistics:
        return SpoolStatistics(
            queued_messages=self._messages,
            queued_bytes=self._bytes,
            queued_batches=len(self._batches),
            max_messages=self.max_messages,
            max_bytes=self.max_bytes,
            oldest_received=self._batches[0].received if self._batches else None,
        )

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()
