"""Converting rsyslog text held in a dict, and checking the result with relay's
own config loader (what `relay check` runs)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from relay import config
from relay.importer import Conversion, MappingFiles, convert
from relay.importer.toml import key, value

MAIN = "/etc/rsyslog.conf"


def run(text: str, others: Mapping[str, str] | None = None) -> Conversion:
    """Convert ``text`` as /etc/rsyslog.conf; ``others``: more files, path -> text."""
    return convert(MAIN, MappingFiles({MAIN: text, **(others or {})}))


def problems(conversion: Conversion) -> list[tuple[str, int, str]]:
    return [(p.source, p.line, p.why) for p in conversion.problems]


def loaded(conversion: Conversion) -> dict[str, Any]:
    """The TOML, parsed, after relay's own loader accepted it (see check)."""
    data = tomllib.loads(conversion.toml)
    check(data)
    return data


def check(data: dict[str, Any]) -> config.Config:
    """relay's config loader over the converted tables: raises ConfigErrors."""
    return config.loads(_dump(data), source="converted.toml")


def _dump(data: dict[str, Any]) -> str:
    lines: list[str] = []

    def table(header: str, items: dict[str, Any]) -> None:
        lines.append(f"[{header}]")
        subs = {k: v for k, v in items.items() if isinstance(v, dict)}
        lines.extend(f"{key(k)} = {value(v)}" for k, v in items.items() if k not in subs)
        for name, sub in subs.items():
            table(f"{header}.{key(name)}", sub)

    for kind, tables in data.items():
        if kind == "relay":
            table("relay", tables)
            continue
        for name, items in tables.items():
            table(f"{kind}.{key(name)}", items)
    return "\n".join(lines) + "\n"
