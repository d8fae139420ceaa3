"""rsyslog's legacy selectors (``*.info;mail.none;authpriv.*``) as a PRI table.

``parse_selector(text)`` reads a selector exactly as rsyslogd 8.2302 reads the
first field of a legacy config line, and returns a frozen :class:`Selector`
that answers "does PRI p match" with one index into a 192-entry table. A
filter on the PRI therefore costs a PRI scan per message, never a parse.

How rsyslog reads a selector (runtime/conf.c ``DecodePRIFilter``, and the
config lexer's pattern that decides what is a selector at all):

* The text must look like ``[*a-z]+[0-7]*[.,][,!=;.*a-z0-7]+`` (letters in
  any case): so no spaces, no ``_`` or ``-``, and no digit 8 or 9 anywhere.
* It is a list of parts separated by ``;``; each part is ``FACILITIES.PRIORITY``
  and is applied, left to right, to a mask of severities per facility. So a
  later part overrides or masks an earlier one for the facilities it names:
  ``*.info;mail.none`` is "info and above, except nothing from mail".
* FACILITIES is a ``,``-separated list of names, numbers or ``*`` (every
  facility; only the first character is looked at, so ``*mail`` is ``*``).
  A number is the C library's code, facility times 8 (``16`` is mail, and
  ``3`` is kern), as in ``<syslog.h>``. A ``;`` inside the facility list ends
  it: the names after it, up to the ``.``, are ignored (``mail,news;kern.info``
  is ``mail,news.info``).
* PRIORITY is a severity name or number, optionally prefixed by ``!`` (remove
  instead of add) and then ``=`` (only that severity, instead of that one and
  every more severe one). ``*`` is every severity and ``none`` none: ``X.none``
  clears X's mask and ``X.!none`` sets all of it; ``X.!*`` clears it. A number
  is taken as C's ``atoi`` takes it (``3abc`` is 3); 16 means ``none``, 255
  means ``*``, and the other numbers from 8 to 31 mean "every severity"
  (with ``=``: no severity).
* A priority may also end with ``,`` instead of ``;`` (``mail.info,news.crit``
  is two parts).
* Names (case-insensitive): facilities kern user mail daemon auth syslog lpr
  news uucp cron authpriv ftp ntp console local0-7, aliases security (auth),
  and rsyslog's own mark and invld (facilities 25 and 24, which no message on
  the wire carries); severities emerg alert crit err warning notice info debug,
  aliases panic (emerg), error (err), warn (warning).

rsyslog logs an error and drops the filter for an unknown name or a part with
no priority; those raise :class:`SelectorError` here, with the offset in the
text. So do the few forms whose effect in rsyslog is undefined behaviour in C
(reading past the end of the string, shifting by 32 or more, writing past its
table): a trailing ``;`` or ``,`` after the last priority, a severity number from
32 to 254 (or 255 with ``=``), ``=*``, and a facility number above 207.

A message with no valid PRI is matched as user.notice (13), as rsyslog treats
a message without one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from relay.errors import ParseError
from relay.protocol.syslog import parse_pri

# rsyslog's per-facility table has 26 slots: the 24 facilities, its "invld"
# (24) and "mark" (25). Only the first 24 appear in a PRI on the wire.
_FACILITY_SLOTS = 26
_WIRE_FACILITIES = 24
PRI_COUNT = _WIRE_FACILITIES * 8

# A message without a valid PRI is user.notice, rsyslog's DEFUPRI.
DEFAULT_PRI = 13

_NOPRI = 0x10  # rsyslog's INTERNAL_NOPRI: "none"
_ALLPRI = 0xFF  # rsyslog's TABLE_ALLPRI: "*"

_SEVERITIES = {
    "emerg": 0,
    "panic": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
    "none": _NOPRI,
    "*": _ALLPRI,
}

# Values are the C library's codes (facility << 3), as rsyslog's table holds them.
_FACILITIES = {
    "kern": 0 << 3,
    "user": 1 << 3,
    "mail": 2 << 3,
    "daemon": 3 << 3,
    "auth": 4 << 3,
    "security": 4 << 3,
    "syslog": 5 << 3,
    "lpr": 6 << 3,
    "news": 7 << 3,
    "uucp": 8 << 3,
    "cron": 9 << 3,
    "authpriv": 10 << 3,
    "ftp": 11 << 3,
    "ntp": 12 << 3,
    "console": 14 << 3,
    **{f"local{n}": (16 + n) << 3 for n in range(8)},
    "invld": 24 << 3,
    "mark": 25 << 3,
}

_HEAD = frozenset("*abcdefghijklmnopqrstuvwxyz")
_HEAD_DIGITS = frozenset("01234567")
_BODY = _HEAD | _HEAD_DIGITS | frozenset(",!=;.")

# Larger numbers make rsyslog shift an int by 32 or more, or write past its
# table: undefined in C, so refused.
_MAX_SEVERITY_NUMBER = 31
_MAX_FACILITY_NUMBER = _FACILITY_SLOTS * 8 - 1


class SelectorError(ParseError, ValueError):
    """A selector rsyslog would refuse; ``position`` is the 0-based offset in ``text``."""

    def __init__(self, message: str, text: str, position: int) -> None:
        super().__init__(f"selector {text!r}: {message} at offset {position}")
        self.message = message
        self.text = text
        self.position = position


@dataclasses.dataclass(frozen=True, slots=True)
class Selector:
    """A parsed selector: ``table[p]`` is 1 when PRI ``p`` (0..191) matches."""

    text: str
    table: bytes

    @property
    def matches_everything(self) -> bool:
        """True when no message can fail it (the stage may skip the scan)."""
        return self.table.count(1) == PRI_COUNT

    @property
    def matches_nothing(self) -> bool:
        return not any(self.table)

    def matches_pri(self, prival: int) -> bool:
        return self.table[prival] == 1

    def matches(self, raw: bytes) -> bool:
        """Whether a message (its bytes, starting with the PRI) matches."""
        return self.table[pri_of(raw)] == 1

    def privals(self) -> frozenset[int]:
        return frozenset(p for p in range(PRI_COUNT) if self.table[p])


def pri_of(raw: bytes) -> int:
    """The PRI of a message, or user.notice when it has no valid one."""
    try:
        return parse_pri(raw)[0]
    except ParseError:
        return DEFAULT_PRI


def parse_selector(text: str) -> Selector:
    """Read ``text`` as rsyslog reads a legacy selector; raise :class:`SelectorError`."""
    _check_shape(text)
    masks = _decode(text)
    table = bytes((masks[p >> 3] >> (p & 7)) & 1 for p in range(PRI_COUNT))
    return Selector(text=text, table=table)


def _check_shape(text: str) -> None:
    """What rsyslog's config lexer takes as a selector: ``[*a-z]+[0-7]*[.,][...]+``."""
    lower = text.lower()
    if not lower:
        raise SelectorError("empty selector", text, 0)
    i = 0
    while i < len(lower) and lower[i] in _HEAD:
        i += 1
    if i == 0:
        raise SelectorError(f"expected a facility name or '*', found {text[0]!r}", text, 0)
    while i < len(lower) and lower[i] in _HEAD_DIGITS:
        i += 1
    if i == len(lower) or lower[i] not in ".,":
        found = repr(text[i]) if i < len(text) else "the end"
        raise SelectorError(f"expected '.' or ',' after the facility, found {found}", text, i)
    i += 1
    if i == len(lower):
        raise SelectorError("expected a priority after '.' or ','", text, i)
    for j in range(i, len(lower)):
        if lower[j] not in _BODY:
            raise SelectorError(f"unexpected character {text[j]!r}", text, j)


def _parts(text: str) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(facilities_start, facilities_end, priority_start, priority_end)``.

    The scan is rsyslog's: the facility list runs from the part's start to
    its first ``.``; the priority runs from there to a ``,`` or ``;``; every
    ``,`` and ``;`` after it is skipped, and the next part starts.
    """
    n = len(text)
    p = 0
    while p < n:
        dot = text.find(".", p)
        q = n if dot == -1 else dot + 1
        pri_start = q
        while q < n and text[q] not in ",;":
            q += 1
        pri_end = q
        while q < n and text[q] in ",;":
            q += 1
        if pri_end < n and q == n:
            # rsyslog's skip loop would read past the end of the string.
            raise SelectorError(f"trailing {text[pri_end]!r}", text, pri_end)
        yield p, (n if dot == -1 else dot), pri_start, pri_end
        p = q


def _number(name: str) -> int:
    """C's atoi on a name that starts with a digit: the leading digits."""
    end = 0
    while end < len(name) and name[end].isdigit():
        end += 1
    return int(name[:end])


def _severity(text: str, start: int, end: int) -> tuple[int, bool, bool]:
    """Decode a priority: ``(value, exact, negated)``."""
    name = text[start:end].lower()
    negated = name.startswith("!")
    if negated:
        name = name[1:]
    exact = name.startswith("=")
    if exact:
        name = name[1:]
    offset = end - len(name)
    if not name:
        raise SelectorError("expected a priority after the facility and '.'", text, offset)
    if name[:1].isdigit():
        value = _number(name)
        if value > _MAX_SEVERITY_NUMBER and not (value == _ALLPRI and not exact):
            raise SelectorError(f"priority number {value} is not 0-31 or 255", text, offset)
        return value, exact, negated
    value = _SEVERITIES.get(name, -1)
    if value < 0:
        shown = text[start:end]
        raise SelectorError(f"unknown priority name {shown!r}", text, start)
    if exact and value == _ALLPRI:
        # rsyslog shifts 1 by 255: undefined in C.
        raise SelectorError("'=*' selects no defined severity", text, offset)
    return value, exact, negated


def _apply(mask: int, value: int, exact: bool, negated: bool) -> int:
    if value == _NOPRI:
        return _ALLPRI if negated else 0
    if exact:
        bit = (1 << value) & 0xFF
        return mask & ~bit & 0xFF if negated else mask | bit
    if value == _ALLPRI:
        return 0 if negated else _ALLPRI
    upto = (1 << (min(value, 7) + 1)) - 1
    return mask & ~upto & 0xFF if negated else mask | upto


def _facility_slots(text: str, start: int, end: int) -> Iterator[int]:
    """The table slots one part's facility list names (rsyslog's scan)."""
    p = start
    while p < end and text[p] not in ".;":
        name_start = p
        while p < end and text[p] not in ",;.":
            p += 1
        name = text[name_start:p].lower()
        if name[:1] == "*":
            yield from range(_FACILITY_SLOTS)
        elif name[:1].isdigit():
            value = _number(name)
            if value > _MAX_FACILITY_NUMBER:
                raise SelectorError(
                    f"facility number {value} above {_MAX_FACILITY_NUMBER}", text, name_start
                )
            yield value >> 3
        else:
            code = _FACILITIES.get(name)
            if code is None:
                raise SelectorError(f"unknown facility name {name!r}", text, name_start)
            yield code >> 3
        while p < end and text[p] == ",":
            p += 1


def _decode(text: str) -> list[int]:
    masks = [0] * _FACILITY_SLOTS
    for fac_start, fac_end, pri_start, pri_end in _parts(text):
        value, exact, negated = _severity(text, pri_start, pri_end)
        for slot in _facility_slots(text, fac_start, fac_end):
            masks[slot] = _apply(masks[slot], value, exact, negated)
    return masks
