"""What the control socket and the metrics listener share: a bounded number
of clients, each sending one request and getting one answer, in a bounded
time.

At most MAX_CLIENTS are served at once (more are closed at once), a client
has REQUEST_TIMEOUT to send its request and take the answer, and each
refusal is counted (``refused``, ``timeouts``, ``bad_requests``; the server
counts ``requests`` and what it finds wrong in a request). An error of the
listener itself (EMFILE and the like) is logged and waited out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from relay.stats import Counters

log = logging.getLogger("relay")

# An operator's command or a scrape answers in milliseconds; a client silent
# this long is stuck or hostile, and its slot is wanted (Prometheus' default
# scrape_timeout is 10 s).
REQUEST_TIMEOUT = 5.0
# Clients at once: `relay stats --watch` from a few terminals, a monitoring
# agent, one or two Prometheus: a handful. Past this, new ones are closed.
MAX_CLIENTS = 16

COUNTERS = ("requests", "bad_requests", "timeouts", "refused")

# Reads a client's request and returns the answer (None: send nothing).
Answer = Callable[[trio.SocketStream], Awaitable[bytes | None]]


class Clients:
    """Accepts connections and answers each with ``answer``."""

    def __init__(self, what: str, answer: Answer, counters: Counters) -> None:
        self.what = what  # for the log: "control socket", "metrics listener"
        self.answer = answer
        self.counters = counters
        self._limiter = trio.CapacityLimiter(MAX_CLIENTS)

    async def accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept until cancelled; each client in a task of ``nursery``."""
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and the like: wait, do not spin or stop
                log.warning("relay: %s: %s", self.what, exc.strerror or exc)
                await trio.sleep(0.1)
                continue
            try:
                self._limiter.acquire_on_behalf_of_nowait(stream)
            except trio.WouldBlock:
                self.counters.add("refused")
                stream.socket.close()
                continue
            nursery.start_soon(self._client, stream)

    async def _client(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT) as scope:
                answer = await self.answer(stream)
                if answer:
                    await stream.send_all(answer)
            if scope.cancelled_caught:
                self.counters.add("timeouts")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.counters.add("bad_requests")
        finally:
            self._limiter.release_on_behalf_of(stream)
            stream.socket.close()


async def read_request(
    stream: trio.SocketStream, complete: Callable[[bytes], bool], limit: int
) -> tuple[bytes, bool]:
    """What the client sends until ``complete`` says it is all there, it stops
    sending, or it sent more than ``limit`` bytes: (request, over the limit)."""
    request = b""
    while not complete(request):
        chunk = await stream.receive_some(limit)
        if not chunk:
            break
        request += chunk
        if len(request) > limit:
            return request, True
    return request, False
