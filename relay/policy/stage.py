"""The processing stage: which outputs take which messages of a batch, in what form.

Between an input's batch and the outputs' spools, :meth:`Stage.route` turns
one :class:`~relay.message.Batch` into the batch each output takes (or None):

* An output whose :class:`~relay.policy.filter.Filter` takes everything, and
  that redacts nothing, takes the batch itself: nothing is looked at, nothing
  copied (a relay with no filters never calls the stage at all:
  :attr:`Stage.passthrough`).
* The per-batch conditions (input, source address, the sender's pid, uid,
  gid and process name) are tested once a batch.
* Per-message conditions make a mask of the batch (one byte per message). The
  PRIs are read once per batch when a selector asks (a slice and a dict
  lookup per message, never a parse), the headers parsed once per message when
  a hostname, app-name or msgid condition asks; both are shared by every
  output. An output that takes part of a batch gets a new batch of those
  messages (their octet-counted form is not kept: it would be the whole).
* An output's :class:`~relay.policy.redact.Redactor` then masks secrets; a
  batch it changes loses its octet-counted form too (the counts changed).

A message no output takes is counted as ``unrouted`` (:attr:`Stage.counts`) and goes
nowhere, as in rsyslog.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence

from relay.errors import ParseError
from relay.message import Batch
from relay.policy.filter import Filter, ProcessName
from relay.policy.redact import Redactor
from relay.policy.selector import DEFAULT_PRI
from relay.protocol import rfc5424
from relay.protocol.detect import parse_any

# Every valid PRI part (RFC 5424 §6.2.1: no leading zero, at most 191) to its value.
_PRI = {b"<%d>" % p: p for p in range(192)}

Fields = tuple[str, str, str] | None  # (hostname in lower case, app-name, msgid)


# A message's first five bytes hold its PRI part ("<191>", "<13>1", "<5>1 "),
# and a stream carries few distinct such prefixes: their PRIs are remembered,
# so reading a batch's PRIs is one slice and one dict lookup a message
# (0.12 us for 300-byte messages, against 0.30 us finding the ">" each time).
# Bounded: past PRI_CACHE prefixes (junk, or a flood of odd ones) a new one
# is read each time instead of remembered.
PRI_CACHE = 4096


class _PriCache(dict[bytes, int]):
    def __missing__(self, prefix: bytes) -> int:
        pri = _PRI.get(prefix[: prefix.find(b">", 1) + 1], DEFAULT_PRI)
        if len(self) < PRI_CACHE:
            self[prefix] = pri
        return pri


_pri_of_prefix = _PriCache()


def pris(messages: Sequence[bytes]) -> list[int]:
    """Each message's PRI value; DEFAULT_PRI (user.notice) where it has none."""
    return list(map(_pri_of_prefix.__getitem__, [m[:5] for m in messages]))


class _Taken(dict[bytes, int]):
    """A message's first five bytes -> 1 when a selector takes its PRI, else 0.

    One lookup a message makes a selector's mask, where reading the PRIs
    first and then the selector's table was two (callgrind, the bench's
    filtered batches: 1,780 -> 1,360 instructions a message). Bounded as
    _PriCache is."""

    __slots__ = ("table",)

    def __init__(self, table: bytes) -> None:
        super().__init__()
        self.table = table

    def __missing__(self, prefix: bytes) -> int:
        taken = self.table[_pri_of_prefix[prefix]]
        if len(self) < PRI_CACHE:
            self[prefix] = taken
        return taken


def header_fields(raw: bytes, received: float) -> Fields:
    """A message's hostname (lower case), app-name and msgid; None if it has no PRI.

    RFC 5424 headers are split at their spaces (about 1 us for 300 bytes; the
    full parse, timestamp included, costs 30); anything else is read by the
    tolerant RFC 3164 parser (about 30 us), as
    :func:`~relay.protocol.detect.parse_any` would."""
    parts = rfc5424.split_header(raw)
    if parts is not None:
        _, _, hostname, app_name, _, msgid, *_ = parts
        return (
            "" if hostname == b"-" else hostname.decode("ascii", "replace").lower(),
            "" if app_name == b"-" else app_name.decode("ascii", "replace"),
            "" if msgid == b"-" else msgid.decode("ascii", "replace"),
        )
    try:
        parsed = parse_any(raw, now=dt.datetime.fromtimestamp(received, dt.UTC))
    except ParseError:
        return None
    return ((parsed.hostname or "").lower(), parsed.app_name or "", parsed.msgid or "")


def _no_name(pid: int) -> None:
    return None


class _View:
    """What the outputs' filters ask of one batch, each computed once."""

    __slots__ = ("_fields", "_prefixes", "batch")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self._prefixes: list[bytes] | None = None
        self._fields: list[Fields] | None = None

    def prefixes(self) -> list[bytes]:
        """Each message's first five bytes: where its PRI is (see _PriCache)."""
        if self._prefixes is None:
            self._prefixes = [m[:5] for m in self.batch.messages]
        return self._prefixes

    def fields(self) -> list[Fields]:
        if self._fields is None:
            received = self.batch.received
            self._fields = [header_fields(m, received) for m in self.batch.messages]
        return self._fields


def _mask(filter: Filter, taken: _Taken | None, view: _View) -> bytes | None:
    """One byte per message, 1 where ``filter``'s per-message conditions hold;
    None when they all hold (or there are none). ``taken``: the selector's
    lookup, when it has one that does not take everything."""
    messages = view.batch.messages
    masks: list[bytes] = []
    if taken is not None:
        masks.append(bytes(map(taken.__getitem__, view.prefixes())))
    if filter.per_message_fields:
        hosts, apps, ids = filter.hostnames, filter.app_names, filter.msgids
        masks.append(
            bytes(
                [
                    f is not None
                    and (not hosts or f[0] in hosts)
                    and (not apps or f[1] in apps)
                    and (not ids or f[2] in ids)
                    for f in view.fields()
                ]
            )
        )
    if len(filter.contains) == 1:
        needle = filter.contains[0]
        masks.append(bytes([needle in m for m in messages]))
    elif filter.contains:
        needles = filter.contains
        masks.append(bytes([any(n in m for n in needles) for m in messages]))
    if filter.regex is not None:
        search = filter.regex.search
        masks.append(bytes([search(m) is not None for m in messages]))
    if not masks:
        return None
    mask = masks[0]
    for other in masks[1:]:
        mask = bytes(map(min, mask, other))
    if mask.count(0) == 0:
        return None
    return mask


class Stage:
    """The filters and redactors of every output, in the router's order."""

    def __init__(
        self,
        filters: Sequence[Filter],
        redactors: Sequence[Redactor | None],
        process_name: ProcessName | None = None,
    ) -> None:
        """``process_name`` reads a pid's name for ``process`` conditions (none
        match without it)."""
        if len(filters) != len(redactors):
            raise ValueError("one filter and one redactor (or None) per output")
        self.outputs = tuple(
            (
                filter,
                redactor,
                None
                if filter.selector is None or filter.selector.matches_everything
                else _Taken(filter.selector.table),
            )
            for filter, redactor in zip(filters, redactors, strict=True)
        )
        self.process_name: ProcessName = process_name or _no_name
        self.redactors = tuple(redactors)
        # A relay with no filter and no redaction never calls route().
        self.passthrough = all(f.takes_everything and r is None for f, r, _ in self.outputs)
        # With one output taking everything, no message can be unrouted.
        self._someone_takes_all = any(f.takes_everything for f in filters)
        self.counts = {"unrouted": 0}  # messages no output took

    def route(self, batch: Batch) -> list[Batch | None]:
        """The batch each output takes (the same order as the filters), or None."""
        view = _View(batch)
        routed: list[Batch | None] = []
        taken = 0  # the union of the outputs' masks, as an integer (one byte a message)
        everything = self._someone_takes_all
        count = len(batch)
        for filter, redactor, selected in self.outputs:
            if not filter.takes_batch_from(batch.input, batch.peer) or (
                filter.by_creds and not filter.takes_creds(batch.creds, self.process_name)
            ):
                routed.append(None)
                continue
            mask = _mask(filter, selected, view) if filter.per_message else None
            if mask is None:
                chosen = batch
                everything = True
            elif mask.count(1) == 0:
                routed.append(None)
                continue
            else:
                if not everything:
                    taken |= int.from_bytes(mask)
                chosen = batch.with_messages(list(itertools.compress(batch.messages, mask)))
            if redactor is not None:
                redacted = redactor.redact(chosen.messages)
                if redacted is not chosen.messages:
                    chosen = batch.with_messages(redacted)
            routed.append(chosen)
        if not everything:
            self.counts["unrouted"] += count - taken.bit_count()
        return routed
