"""The converter's result as relay.toml text: tables, names, values.

A :class:`Table` is one ``[input.NAME]`` or ``[output.NAME]`` (or
``[relay]``) with the place it came from; :func:`render` writes them with a
``# from FILE:LINE: TEXT`` comment above each, in the order given.
"""

from __future__ import annotations

import dataclasses
import json
import re

Value = str | int | float | bool | list[str]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


@dataclasses.dataclass(slots=True)
class Table:
    """A table to write: ``kind`` is "relay", "input" or "output"."""

    kind: str
    name: str
    source: str
    line: int
    text: str
    keys: dict[str, Value] = dataclasses.field(default_factory=dict)
    subtables: dict[str, dict[str, Value]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def header(self) -> str:
        return "relay" if self.kind == "relay" else f"{self.kind}.{key(self.name)}"


def key(name: str) -> str:
    """A TOML key: bare when it can be, else quoted."""
    return name if _BARE_KEY.fullmatch(name) else value(name)


def value(item: Value) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, list):
        return "[" + ", ".join(value(x) for x in item) + "]"
    # JSON's escapes (\" \\ \n \t \uXXXX) are TOML's basic-string escapes.
    return json.dumps(item, ensure_ascii=False)


def size(count: int) -> int | str:
    """A byte count, as "N GiB" / "N MiB" / "N KiB" when it is a whole number of one."""
    for unit, factor in _UNITS:
        if count and count % factor == 0:
            return f"{count // factor} {unit}"
    return count


def _comment(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 100 else flat[:97] + "..."


def render(tables: list[Table], header: str) -> str:
    """The whole file: ``header`` (comment lines), then every table."""
    out = [f"# {line}" if line else "#" for line in header.splitlines()]
    for table in tables:
        out.append("")
        out.append(f"# from {table.source}:{table.line}: {_comment(table.text)}")
        out.extend(f"# {note}" for note in table.notes)
        out.append(f"[{table.header}]")
        out.extend(f"{key(k)} = {value(v)}" for k, v in table.keys.items())
        for name, sub in table.subtables.items():
            out.append(f"[{table.header}.{key(name)}]")
            out.extend(f"{key(k)} = {value(v)}" for k, v in sub.items())
    return "\n".join(out) + "\n"


def unique_name(wanted: str, taken: set[str]) -> str:
    """``wanted`` made a readable bare key, with -2, -3 ... if it is taken."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", wanted)
    base = re.sub(r"-{2,}", "-", base).strip("-") or "unnamed"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name
