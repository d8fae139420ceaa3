"""The settings of an output that writes the JSON form (relay/protocol/jsonform.py).

``host_fields``, ``labels`` and ``parse_message``, on a file output with
``format = "json"`` and on every output that only writes JSON. Values and
their checks only, no I/O: relay/config.py reads the keys through
:func:`json_settings`; relay/service/enrichment.py reads the host's facts at
start and makes the :class:`~relay.protocol.jsonform.JsonOptions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

from relay.protocol.jsonform import FIELDS

__all__ = ["HOST_FIELDS", "JSON_KEYS", "JsonSettings", "json_settings"]

# What the relay may say about its own host, under "host" (relay.toml(5)):
# the name (gethostname), /etc/machine-id, the kernel release (uname -r).
HOST_FIELDS = ("name", "machine_id", "kernel")
JSON_KEYS = ("host_fields", "labels", "parse_message")


@dataclasses.dataclass(frozen=True, slots=True)
class JsonSettings:
    """``host_fields`` in the order given, ``labels`` as (name, value) pairs in
    the order given, ``parse_message`` the key for a message text's object."""

    host_fields: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    parse_message: str | None = None


Get = Callable[[Mapping[str, Any], str, Callable[[Any], Any], Any], Any]


def json_settings(
    table: Mapping[str, Any],
    key: str,
    *,
    get: Get,
    error: Callable[[str, str], None],
    allowed: Collection[str],
    writes_json: bool,
) -> JsonSettings:
    """The JSON keys of output table ``table`` (at ``key``), through the config
    loader's ``get`` and ``error``. Nothing for a scheme whose ``allowed`` keys
    do not have them (the loader reports them as unknown); each is refused on an
    output that does not write JSON (a file output of another format)."""
    if not set(JSON_KEYS) <= set(allowed):
        return JsonSettings()
    if not writes_json:
        for name in JSON_KEYS:
            if name in table:
                error(f"{key}.{name}", 'only applies with format = "json"')
        return JsonSettings()
    return JsonSettings(
        host_fields=get(table, f"{key}.host_fields", _host_fields, ()),
        labels=get(table, f"{key}.labels", _labels, ()),
        parse_message=get(table, f"{key}.parse_message", _parse_message, None),
    )


def _host_fields(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of names, e.g. {list(HOST_FIELDS)}")
    for name in value:
        if name not in HOST_FIELDS:
            raise ValueError(f"unknown host field {name!r} (known: {', '.join(HOST_FIELDS)})")
    if len(set(value)) != len(value):
        raise ValueError("names a field twice")
    return tuple(value)


def _labels(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError('must be a table of strings, e.g. { env = "prod" }')
    for name, text in value.items():
        if not isinstance(text, str):
            raise ValueError(f"label {name!r} must be a string, not {type(text).__name__}")
    return tuple(value.items())


def _parse_message(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('must be a key name, e.g. "app"')
    if value in FIELDS:
        raise ValueError(f'{value!r} is a field of relay\'s own (choose another key, e.g. "app")')
    return value
