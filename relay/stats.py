"""Counters of every component, kept in one place.

Each input, output and spool owns a :class:`Counters`; the hot path adds batch
sizes to it (one dict update per batch, never per message). :class:`Registry`
holds them all by component name, for the summary line the relay logs and for
the stats command and metrics that read :meth:`Registry.snapshot`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

# Keys a LogLimit remembers; past this many it starts afresh (bounded memory
# under a flood from many addresses).
MAX_KEYS = 10_000


class Counters:
    """Named counters of one component; names are fixed at creation."""

    __slots__ = ("_values", "kind", "name")

    def __init__(self, kind: str, name: str, names: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self._values = dict.fromkeys(names, 0)

    def add(self, counter: str, amount: int = 1) -> None:
        self._values[counter] += amount

    def __getitem__(self, counter: str) -> int:
        return self._values[counter]

    def snapshot(self) -> dict[str, int]:
        return dict(self._values)


class Registry:
    """All components' counters, by ``kind`` and ``name``."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], Counters] = {}

    def counters(self, kind: str, name: str, names: Iterable[str]) -> Counters:
        counters = Counters(kind, name, names)
        self._components[(kind, name)] = counters
        return counters

    def register(self, counters: Counters) -> None:
        """Hold ``counters`` (made elsewhere) under their kind and name."""
        self._components[(counters.kind, counters.name)] = counters

    def forget(self, kind: str, name: str) -> None:
        self._components.pop((kind, name), None)

    def adopt(self, kind: str, name: str, values: dict[str, int]) -> Counters:
        """Counters kept by a component in its own dict (a redactor's per rule)."""
        counters = Counters(kind, name, ())
        counters._values = values
        self._components[(kind, name)] = counters
        return counters

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        out: dict[str, dict[str, dict[str, int]]] = {}
        for (kind, name), counters in self._components.items():
            out.setdefault(kind, {})[name] = counters.snapshot()
        return out


def summary(snapshot: Mapping[str, Mapping[str, Mapping[str, int]]]) -> str:
    """One line per component with its non-zero counters, for the relay's log."""
    lines = []
    for kind, components in snapshot.items():
        for name, values in components.items():
            shown = ", ".join(f"{k}={v}" for k, v in values.items() if v)
            lines.append(f"{kind} {name}: {shown or 'nothing'}")
    return "\n".join(lines)


class LogLimit:
    """At most one log line per key (an address and category, a kind of
    error) per ``interval`` seconds; the rest are counted, and the next line of
    that key says how many were not logged. Time is passed in."""

    def __init__(self, interval: float, what: str) -> None:
        self.interval = interval
        self.what = what  # "failures from this address": what was not logged
        self._last: dict[str, tuple[float, int]] = {}  # key -> (logged at, suppressed)

    def line(self, key: str, line: str, now: float) -> str | None:
        """The line to log now (with how many were suppressed), or None."""
        logged_at, suppressed = self._last.get(key, (float("-inf"), 0))
        if now - logged_at < self.interval:
            self._last[key] = (logged_at, suppressed + 1)
            return None
        if len(self._last) >= MAX_KEYS:
            self._last.clear()
        self._last[key] = (now, 0)
        if suppressed:
            return f"{line} ({suppressed} more {self.what} not logged)"
        return line

    def log(self, logger: logging.Logger, level: int, key: str, line: str, now: float) -> None:
        """Log ``line`` at ``level`` if ``key`` may have a line now."""
        shown = self.line(key, line, now)
        if shown is not None:
            logger.log(level, "%s", shown)
