"""HTTP(S) output: batches of JSON records POSTed to an ingestion API.

The client is httpx (on trio through httpcore and anyio): a well-kept
client with keep-alive connections, TLS through the ``ssl.SSLContext`` the
TLS profile builds (client certificates included), and timeouts; one client
per target. Each request carries up to ``batch_max_messages`` records and
``batch_max_bytes`` of body (before gzip); a request that is not full waits
up to ``flush_interval`` for more.

Delivery (relay/policy/http.py decides what an answer means): ``deliver()``
returns only once every message it was given is settled, taken by the API
(2xx; for ``_bulk``, item by item) or written to the dead-letter file, so the
delivery loop acks the batches only then. Until then it retries: 429, 5xx
and connection errors with back-off honouring ``Retry-After`` (failing over
to the next target as TCP does, relay/policy/targets.py); 413 halves the
request; 401 and 403 every AUTH_RETRY seconds, logged once a minute. A
retry that may repeat what the server already took (the answer was lost, a
proxy's 502/504, a stop in the middle) counts those messages as ``resent``:
the duplicates an API may see are bounded by one take (at most 1 MiB of
messages, delivery.SEND_BYTES).

The bearer token is read from ``token_file`` at start (refused if others
may read it) and again whenever the file changes; it is never logged.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import ssl
import stat
import time
import zlib
from typing import TYPE_CHECKING, Any

import orjson
import trio

from relay.config import Endpoint
from relay.errors import StartupError
from relay.message import Batch
from relay.outputs.delivery import COUNTERS as BASE_COUNTERS
from relay.outputs.delivery import SEND_BYTES, Output, report_targets
from relay.outputs.window import WindowLost
from relay.policy import http as policy
from relay.policy.backoff import Backoff
from relay.policy.http import HttpSettings, Verdict
from relay.policy.targets import (
    Event,
    State,
    TargetSelector,
)
from relay.protocol import jsonform

if TYPE_CHECKING:
    import httpx
from relay.protocol.httpbody import body_for, bulk_errors
from relay.service.enrichment import json_options
from relay.tls.failures import classify_handshake_error
from relay.tls.stream import count_failure

log = logging.getLogger("relay.output")

COUNTERS = (
    *BASE_COUNTERS,
    "requests",  # POSTs answered (any status)
    "throttled",  # answers 429
    "split",  # answers 413: the request was cut in two
    "auth_failures",  # answers 401/403
    "rejected",  # messages refused for good (4xx, _bulk item errors)
    "dead_lettered",  # of those, written to the dead-letter file
    "dropped_rejected",  # of those, dropped (no dead-letter file, or it failed)
)
# gzip level 1: most of the size gain of level 6 on log lines (JSON is very
# repetitive) at a third of the CPU; the API's CPU is not ours to save.
GZIP_LEVEL = 1
# Per record in an es_bulk body: its action line, about this long.
BULK_OVERHEAD = 48
# How much of a refusal's answer goes to the log and the dead-letter file.
ANSWER_EXCERPT = 200
# A take is "full" (sent without waiting for flush_interval) once it holds
# this much of what the delivery loop takes at most.
FULL_TAKE = SEND_BYTES // 2


class HttpStatusError(Exception):
    """An answer that is not a 2xx, as a failure the delivery loop can log."""


class _Token:
    """The bearer token in ``path``: read again whenever the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.value = ""
        self._stamp: tuple[int, int, int] | None = None

    def load(self) -> None:
        """Read it (StartupError when unreadable or readable by others)."""
        try:
            info = os.stat(self.path)
            self._check(info)
            with open(self.path, encoding="utf-8") as file:
                value = file.read().strip()
        except OSError as exc:
            raise StartupError(f"token_file {self.path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise StartupError(f"token_file {self.path}: not UTF-8 text") from None
        if not value or any(c in value for c in "\r\n\0"):
            raise StartupError(f"token_file {self.path}: must hold one line, the token")
        self.value = value
        self._stamp = (info.st_ino, info.st_mtime_ns, info.st_size)

    def _check(self, info: os.stat_result) -> None:
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StartupError(
                f"token_file {self.path}: readable by others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); chmod 600 it"
            )

    def refresh(self) -> str | None:
        """Read it again if it changed; a reason (to log) if the new one is refused."""
        try:
            info = os.stat(self.path)
        except OSError as exc:
            return f"token_file {self.path}: {exc.strerror}; keeping the token read before"
        if (info.st_ino, info.st_mtime_ns, info.st_size) == self._stamp:
            return None
        try:
            self.load()
        except StartupError as exc:
            self._stamp = (info.st_ino, info.st_mtime_ns, info.st_size)  # said once
            return f"{exc}; keeping the token read before"
        log.info("token_file %s: read again", self.path)
        return None


class HttpOutput(Output):
    COUNTERS = COUNTERS

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        settings: HttpSettings = config.http or HttpSettings()
        self.settings = settings
        self.json_options = jsonform.JsonOptions()  # with the host's facts: open()
        self.body = body_for(settings.body, index=settings.index, labels=dict(config.json.labels))
        self.targets = TargetSelector(
            config.all_targets, config.mode, Backoff(maximum=config.retry_max)
        )
        self.token = _Token(settings.token_file) if settings.token_file else None
        self._clients: dict[int, httpx.AsyncClient] = {}
        self._waiting_since: float | None = None  # a take not full: since when it waits
        self._auth_logged = -float("inf")  # when a 401/403 was last logged
        self._unsure = 0  # messages of this take the API may have taken already
        self._sent_token = ""  # the token the last request carried

    async def open(self) -> None:
        tls = self.config.tls
        if tls is not None and tls.permitted_peers:
            # httpx checks the server's name against the URL only; an allow-list
            # checked after the handshake would come after the request was sent.
            raise StartupError(
                f"output {self.name}: permitted_peers of [tls.{self.config.tls_name}] is not "
                "supported by https:// outputs: the server's certificate must name the "
                "URL's host"
            )
        await super().open()
        self.json_options = json_options(self.config.json, output=self.name)
        if self.token is not None:
            try:
                self.token.load()
            except StartupError as exc:
                raise StartupError(f"output {self.name}: {exc}") from None
        if self.settings.dead_letter:
            try:
                with open(self.settings.dead_letter, "ab"):
                    pass
            except OSError as exc:
                raise StartupError(
                    f"output {self.name}: dead_letter {self.settings.dead_letter}: {exc.strerror}"
                ) from None

    # -- the delivery loop's side ----------------------------------------------

    async def deliver(self, batches: list[Batch]) -> None:
        if not self._full(batches):
            await self._wait_for_more(len(batches))
        self._waiting_since = None
        records: list[bytes] = []
        received: list[float] = []
        options = self.json_options
        for batch in batches:
            encoded = jsonform.encode_batch(
                batch.messages,
                received=batch.received,
                peer=batch.peer,
                input=batch.input,
                creds=batch.creds,
                options=options,
            )
            records.extend(encoded)
            received.extend([batch.received] * len(encoded))
            # Encoding costs microseconds a message: a take of 1 MiB would hold
            # the inputs up for tens of ms; let them read between batches.
            await trio.lowlevel.checkpoint()
        self._unsure = 0
        try:
            for start, end in self._requests(records):
                await self._settle(records[start:end], received[start:end])
        except BaseException:
            # Stopped (or failed) halfway: the batches stay queued and go again,
            # whole, after the restart; what the API may have taken comes twice.
            if self._unsure:
                self.counters.add("resent", self._unsure)
            raise
        finally:
            self._unsure = 0

    def _full(self, batches: list[Batch]) -> bool:
        if self.settings.flush_interval <= 0:
            return True
        messages = nbytes = 0
        for batch in batches:
            messages += len(batch)
            nbytes += batch.nbytes
        return (
            messages >= self.settings.batch_max_messages
            or nbytes * 2 >= self.settings.batch_max_bytes
            or nbytes >= FULL_TAKE
        )

    async def _wait_for_more(self, taken: int) -> None:
        """A take that is not full waits for more, up to flush_interval since it
        began to wait; more arriving makes the loop take again (WindowLost)."""
        now = trio.current_time()
        if self._waiting_since is None:
            self._waiting_since = now
        deadline = self._waiting_since + self.settings.flush_interval
        if now >= deadline:
            return
        with trio.move_on_at(deadline):
            await self.spool.wait_batches(1, skip=self.window.take() + taken)
        raise WindowLost

    def _requests(self, records: list[bytes]) -> list[tuple[int, int]]:
        """``records`` cut into requests of at most batch_max_messages records and
        batch_max_bytes of body (at least one record each)."""
        most, room = self.settings.batch_max_messages, self.settings.batch_max_bytes
        extra = BULK_OVERHEAD + 1 if self.settings.body == "es_bulk" else 1
        if not records:
            return []
        if len(records) <= most and sum(map(len, records)) + extra * len(records) <= room:
            return [(0, len(records))]  # the common case, without a loop in Python
        cuts = []
        start = size = 0
        for i, record in enumerate(records):
            size += len(record) + extra
            if i > start and (i - start >= most or size > room):
                cuts.append((start, i))
                start, size = i, len(record) + extra
        if start < len(records):
            cuts.append((start, len(records)))
        return cuts

    # -- one request, until it is settled --------------------------------------

    async def _settle(self, records: list[bytes], received: list[float]) -> None:
        """POST ``records`` until every one is taken or dead-lettered."""
        pending = collections.deque([(records, received)])
        backoff = Backoff(maximum=self.config.retry_max)
        tried: set[int] = set()
        while pending:
            part, times = pending[0]
            index = self._choose(tried)
            if index is None:  # every target failed this round
                backoff = await self._pause(backoff, None)
                tried.clear()
                continue
            outcome = await self._post(index, part, times)
            if isinstance(outcome, BaseException):
                tried.add(index)
                reason = _reason(outcome)
                self._target_failed(index, reason)
                if len(tried) >= len(self.targets.targets):
                    error = HttpStatusError(f"{self._url(index)}: {reason}")
                    backoff = await self._pause(backoff, error)
                    tried.clear()
                continue
            status, headers, answer = outcome
            self._report(self.targets.connected(index))  # it answered: up (5xx: down below)
            found = policy.verdict(status)
            if found is Verdict.DELIVERED:
                retry = self._taken(index, part, times, answer)
                pending.popleft()
                if retry is not None:
                    pending.appendleft(retry)
                    backoff = await self._pause(backoff, HttpStatusError("_bulk items refused 429"))
                elif backoff.failures or self.last_error:  # (401/403 count no back-off)
                    log.warning(
                        "output %s: delivering again%s",
                        self.name,
                        f" after {backoff.failures} failed attempts" if backoff.failures else "",
                    )
                    backoff = backoff.reset()
                    self.last_error = ""
                tried.clear()
                continue
            # Without the answer's text: one that varies (a request id) would make
            # every attempt a new reason, logged (the delivery loop logs changes).
            error = HttpStatusError(f"{self._url(index)} answered {status}")
            if found is Verdict.RETRY:
                if status == 429:
                    self.counters.add("throttled")
                else:
                    self._target_failed(index, f"answered {status}")
                    tried.add(index)
                if status in (502, 504):  # a proxy that may have passed it on
                    self._resending(len(part))
                wait = policy.retry_after(headers.get("retry-after"), time.time())
                if status == 429 or len(tried) >= len(self.targets.targets):
                    backoff = await self._pause(backoff, error, wait)
                    tried.clear()
            elif found is Verdict.SPLIT:
                self.counters.add("split")
                pending.popleft()
                if len(part) == 1:
                    self._reject(part, status, "one message larger than the API takes")
                else:
                    half = policy.split(len(part))
                    pending.appendleft((part[half:], times[half:]))
                    pending.appendleft((part[:half], times[:half]))
            elif found is Verdict.AUTH:
                await self._auth_failed(index, status)
            else:
                pending.popleft()
                self._reject(part, status, answer.decode("utf-8", "replace"))

    def _choose(self, tried: set[int]) -> int | None:
        """The target for the next request: failing back to an earlier one when
        its back-off is over (a probe), else the plan's."""
        plan = self.targets.plan(trio.current_time(), exclude=tried)
        if plan.probe:
            index = plan.probe[0]
        elif plan.write is not None:
            index = plan.write
        elif plan.connect is not None:
            index = plan.connect
        else:
            return None
        if self.targets.state(index) is not State.UP:
            self.targets.connecting(index)
        return index

    async def _pause(
        self, backoff: Backoff, error: BaseException | None, wait: float | None = None
    ) -> Backoff:
        """Wait before the next attempt: the back-off, or longer if the server asked."""
        backoff = backoff.increment()
        delay = backoff.delay(random.random())
        if wait is not None:
            delay = max(delay, wait)
        if error is not None:
            self._failed(error, delay)
        await trio.sleep(delay)
        return backoff

    async def _auth_failed(self, index: int, status: int) -> None:
        """401/403: keep everything; try again every AUTH_RETRY seconds, or as soon
        as the token file changes; one log line a minute."""
        self.counters.add("auth_failures")
        now = trio.current_time()
        if now - self._auth_logged >= policy.AUTH_LOG_INTERVAL:
            self._auth_logged = now
            log.warning(
                "output %s: %s answered %d (%s): check the token (token_file); "
                "%d messages queued, retrying every %.0f s",
                self.name,
                self._url(index),
                status,
                "unauthorized" if status == 401 else "forbidden",
                len(self.spool),
                policy.AUTH_RETRY,
            )
            self.last_error = f"answered {status}"
            if self.down_since is None:
                self.down_since = time.time()
        deadline = now + policy.AUTH_RETRY
        while trio.current_time() < deadline:
            if self._refresh_token() != self._sent_token:
                return  # a new token: try it now
            await trio.sleep(min(0.5, max(0.0, deadline - trio.current_time())))

    def _refresh_token(self) -> str:
        """The token, read again if its file changed (a refused new one is logged)."""
        if self.token is None:
            return ""
        reason = self.token.refresh()
        if reason:
            log.warning("output %s: %s", self.name, reason)
        return self.token.value

    # -- the request -----------------------------------------------------------

    async def _post(
        self, index: int, records: list[bytes], received: list[float]
    ) -> tuple[int, httpx.Headers, bytes] | BaseException:
        """One POST; its status, headers and body, or the error that ended it."""
        body = self.body.encode(records, received)
        headers = {"Content-Type": self.body.content_type}
        if self.settings.gzip:
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            body = compressor.compress(body) + compressor.flush()
            headers["Content-Encoding"] = "gzip"
        if self.token is not None:
            self._sent_token = self._refresh_token()
            headers["Authorization"] = f"Bearer {self._sent_token}"
        headers.update(self.settings.headers)
        client = await self._client(index)
        import httpx  # loaded by _client: see _client

        self._unsure += len(records)  # from here the API may take them
        try:
            response = await client.post(self._url(index), content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self._unsure -= len(records)  # never reached the server
            await self._drop_client(index)
            return self._handshake_failure(index, exc) or exc
        except (httpx.HTTPError, OSError) as exc:
            self._unsure -= len(records)
            self._resending(len(records))  # the answer is lost, not the request
            await self._drop_client(index)
            return exc
        self.counters.add("requests")
        if not 200 <= response.status_code < 300:
            self._unsure -= len(records)
        answer = response.content
        if not _textual(response.headers.get("content-type", "")):
            answer = b""  # an HTML error page says no more than its status
        return response.status_code, response.headers, answer

    def _handshake_failure(self, index: int, exc: BaseException) -> BaseException | None:
        """A failed TLS handshake, classified and counted as for tls:// outputs
        (tls_failures); None for any other failure."""
        profile = self.config.tls
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        if profile is None or cause is None:
            return None
        endpoint = self.targets.endpoint(index)
        failure = classify_handshake_error(
            cause,
            role="client",
            peer=endpoint.address,
            profile=profile,
            expected_name=endpoint.host,
        )
        count_failure(self.counters, failure)
        return HttpStatusError(failure.line)

    def _resending(self, count: int) -> None:
        self.counters.add("resent", count)

    def _taken(
        self, index: int, records: list[bytes], received: list[float], answer: bytes
    ) -> tuple[list[bytes], list[float]] | None:
        """A 2xx: the records are taken (for ``_bulk``, those without an error);
        what is to be sent again (``_bulk`` items refused with 429/5xx), or None."""
        self._report(self.targets.delivered(index))
        if self.settings.body != "es_bulk":
            return None
        refused = bulk_errors(answer, len(records))
        if refused is None:
            log.warning(
                "output %s: %s answered 2xx without a _bulk result for %d items%s; "
                "taking them as delivered",
                self.name,
                self._url(index),
                len(records),
                _excerpt(answer),
            )
            return None
        self._unsure -= len(refused)
        again: list[int] = []
        for position, status, reason in refused:
            if policy.item_verdict(status) is Verdict.RETRY:
                again.append(position)
            else:
                self._reject([records[position]], status, reason)
        if not again:
            return None
        return [records[i] for i in again], [received[i] for i in again]

    # -- refusals ----------------------------------------------------------------

    def _reject(self, records: list[bytes], status: int, reason: str) -> None:
        """Refused for good: to the dead-letter file (else dropped), counted, logged."""
        self.counters.add("rejected", len(records))
        reason = reason[:ANSWER_EXCERPT]
        written = self._dead_letter(records, status, reason) if self.settings.dead_letter else False
        self.counters.add("dead_lettered" if written else "dropped_rejected", len(records))
        log.warning(
            "output %s: the API refused %d messages with %d%s; %s",
            self.name,
            len(records),
            status,
            f" ({reason.strip()})" if reason.strip() else "",
            f"written to {self.settings.dead_letter}" if written else "dropped",
        )

    def _dead_letter(self, records: list[bytes], status: int, reason: str) -> bool:
        head = orjson.dumps({"output": self.name, "status": status, "reason": reason})[:-1]
        lines = b"".join(head + b',"record":' + record + b"}\n" for record in records)
        try:
            with open(self.settings.dead_letter, "ab") as file:
                file.write(lines)
        except OSError as exc:
            log.error(
                "output %s: cannot write dead_letter %s: %s",
                self.name,
                self.settings.dead_letter,
                exc.strerror,
            )
            return False
        return True

    # -- targets and clients -----------------------------------------------------

    def _url(self, index: int) -> str:
        return self.targets.endpoint(index).url

    async def _client(self, index: int) -> httpx.AsyncClient:
        # httpx is imported here, by the relays that have an HTTP output: it
        # adds 3.5 MiB to every relay's resident memory otherwise.
        import httpx

        client = self._clients.get(index)
        if client is None:
            endpoint: Endpoint = self.targets.endpoint(index)
            verify: Any = True
            if endpoint.scheme == "https":
                if endpoint.host not in self.tls_contexts:
                    await Output.open(self)
                verify = self.tls_contexts[endpoint.host].context
            client = httpx.AsyncClient(
                verify=verify,
                timeout=httpx.Timeout(self.settings.timeout),
                # One request at a time per output: one connection kept alive.
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                # A daemon does not take proxies from its environment by surprise.
                trust_env=False,
            )
            self._clients[index] = client
        return client

    async def _drop_client(self, index: int) -> None:
        client = self._clients.pop(index, None)
        if client is not None:
            with trio.CancelScope(shield=True):
                await client.aclose()

    def _target_failed(self, index: int, reason: str) -> None:
        self.counters.add("target_failures")
        self._report(self.targets.failed(index, trio.current_time(), reason, random.random()))

    def _report(self, events: list[Event]) -> None:
        report_targets(self.name, events, len(self.targets.targets))

    async def aclose(self) -> None:
        for index in list(self._clients):
            await self._drop_client(index)


def _reason(exc: BaseException) -> str:
    """One line for a failed request."""
    if isinstance(exc, HttpStatusError):
        return str(exc)
    import httpx  # see HttpOutput._client

    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {exc}" if str(exc) else "cannot connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection closed: {exc}"
    text = str(exc)
    return text or type(exc).__name__


def _textual(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind.endswith(("json", "/plain")) or kind == ""


def _excerpt(answer: bytes) -> str:
    text = answer[:ANSWER_EXCERPT].decode("utf-8", "replace").strip()
    return f": {' '.join(text.split())}" if text else ""
