"""Selectors as sets of PRIs, and back to the shortest plain selector text.

rsyslog's ``stop`` (or ``~``) after a selector takes those messages away from
every action after it in the same ruleset. relay has no order between
outputs, so the converter folds each stop into the later outputs' filters:
their PRI table minus the stopped one, written back as a selector
(:func:`render`) that relay's ``filter`` reads to exactly that table.
"""

from __future__ import annotations

from collections import Counter

from relay.policy.selector import PRI_COUNT, parse_selector

_SEVERITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_FACILITY_NAMES = {
    0: "kern",
    1: "user",
    2: "mail",
    3: "daemon",
    4: "auth",
    5: "syslog",
    6: "lpr",
    7: "news",
    8: "uucp",
    9: "cron",
    10: "authpriv",
    11: "ftp",
    12: "ntp",
    14: "console",
    **{16 + n: f"local{n}" for n in range(8)},
}
FACILITIES = 24
ALL = bytes([1]) * PRI_COUNT


def table(text: str) -> bytes:
    """The 192-entry PRI table of a selector (raises SelectorError)."""
    return parse_selector(text).table


def minus(wanted: bytes, removed: bytes) -> bytes:
    return bytes(a & (1 - b) for a, b in zip(wanted, removed, strict=True))


def union(a: bytes, b: bytes) -> bytes:
    return bytes(x | y for x, y in zip(a, b, strict=True))


def _facility(f: int) -> str:
    # A facility without a name is written as its code, facility * 8 (<syslog.h>).
    return _FACILITY_NAMES.get(f, str(f << 3))


def _severities(mask: int) -> list[str]:
    """Priority parts whose union is exactly ``mask`` (bit s: severity s)."""
    if mask == 0xFF:
        return ["*"]
    if mask & (mask + 1) == 0:  # 0..k: "k and more severe"
        return [_SEVERITY_NAMES[mask.bit_length() - 1]]
    return [f"={_SEVERITY_NAMES[s]}" for s in range(8) if mask >> s & 1]


def render(pris: bytes) -> str:
    """A selector that matches exactly the PRIs set in ``pris``."""
    masks = [sum(pris[f * 8 + s] << s for s in range(8)) for f in range(FACILITIES)]
    common, _ = Counter(masks).most_common(1)[0]
    parts = [f"*.{p}" for p in _severities(common)] if common else []
    groups: dict[int, list[str]] = {}
    for f, mask in enumerate(masks):
        if mask != common:
            groups.setdefault(mask, []).append(_facility(f))
    for mask, names in groups.items():
        facilities = ",".join(names)
        if common:
            parts.append(f"{facilities}.none")
        parts.extend(f"{facilities}.{p}" for p in _severities(mask) if mask)
    text = ";".join(parts) or "*.none"
    # A selector must start with a name or "*" (rsyslog's lexer): not a number.
    return f"*.none;{text}" if text[0].isdigit() else text
