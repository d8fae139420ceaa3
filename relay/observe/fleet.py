"""The status document of a relay with worker processes: the workers' added up.

With ``[relay] workers`` the parent process owns ``state_dir/control.sock``
and ``[relay] metrics``; each worker answers on its own control socket
(``state_dir/worker-K/control.sock``). For ``relay stats`` and a scrape, the
parent asks every worker for its document (relay/observe/status.py) and
:func:`merge` adds them up, so that the page reads as one relay's: counts
and queue sizes are summed, an output is down if it is down in any worker,
the oldest message is the oldest of all. :func:`fleet_document` adds a
``workers`` list (pid, state, restarts), which the metrics show with a
``worker`` label. A worker that does not answer (restarting) is missing
from the sums for that moment; its entry says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Keys whose numbers are not added up across workers.
_LARGEST = frozenset({"oldest_age", "time", "not_after"})
_SMALLEST = frozenset({"started", "down_since"})
_FIRST = frozenset({"version", "pid"})


def merge(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One document from the workers' (see the module docstring)."""
    merged: dict[str, Any] = {}
    for doc in docs:
        merged = _merge(merged, doc, "")
    return merged


def _merge(a: Any, b: Any, key: str) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = dict(a)
        for name, value in b.items():
            out[name] = _merge(a.get(name), value, name)
        return out
    if isinstance(a, bool) or isinstance(b, bool):  # before numbers: bool is an int
        return (a and b) if key == "up" else (a or b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return _number(a, b, key)
    if isinstance(a, list) and isinstance(b, list):
        if key == "targets":
            return _by_url(a, b)
        return a + [x for x in b if x not in a]  # connected URLs
    if isinstance(a, str) and isinstance(b, str):
        if key == "state" and a != b:  # the worst: down, then up, then idle
            return next(s for s in ("down", "up", a) if s in (a, b))
        return a or b  # a URL, the first worker's last_error
    return a


def _number(a: float, b: float, key: str) -> float:
    if key in _LARGEST:
        return max(a, b)
    if key in _SMALLEST:
        return min(a, b)
    if key in _FIRST:
        return a
    return a + b


def _by_url(a: list[Any], b: list[Any]) -> list[Any]:
    """An output's targets, each merged with the same URL's in the other list."""
    out = {t["url"]: t for t in a}
    for target in b:
        out[target["url"]] = _merge(out.get(target["url"]), target, "")
    return list(out.values())


def fleet_document(
    docs: Sequence[Mapping[str, Any] | None],
    workers: Sequence[Mapping[str, Any]],
    base: Mapping[str, Any],
) -> dict[str, Any]:
    """The merged document of the workers that answered (``docs``, None for
    one that did not), with ``base`` (the parent's pid, start time, state
    directory) over it and ``workers``, one entry each."""
    merged = merge([d for d in docs if d is not None])
    merged.setdefault("inputs", {})
    merged.setdefault("outputs", {})
    merged.setdefault("certificates", {})
    merged.setdefault("other", {})
    merged.update(base)
    merged["workers"] = [
        {**worker, "answered": doc is not None} for worker, doc in zip(workers, docs, strict=True)
    ]
    return merged
