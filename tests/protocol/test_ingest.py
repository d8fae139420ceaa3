"""HTTP ingest bodies: relay/protocol/ingest.py."""

from __future__ import annotations

import contextlib
import gzip
import json
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import ParseError
from relay.protocol.ingest import BadRecord, BodyTooLarge, decode_body, inflate
from relay.protocol.rfc5424 import parse


def record(n: int) -> dict[str, object]:
    return {"message": f"seq={n}", "hostname": "web1", "app_name": "app", "severity": "err"}


def ndjson(records: Sequence[object], newline: bytes = b"\n") -> bytes:
    return b"".join(json.dumps(r).encode() + newline for r in records)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_ndjson_records_become_messages_in_order(newline: bytes) -> None:
    messages = decode_body(ndjson([record(n) for n in range(5)], newline))
    parsed = [parse(m) for m in messages]
    assert [p.msg for p in parsed] == [b"seq=%d" % n for n in range(5)]
    assert {(p.hostname, p.app_name, int(p.severity)) for p in parsed} == {("web1", "app", 3)}


def test_a_json_array_is_the_same_records() -> None:
    records = [record(n) for n in range(3)]
    assert decode_body(b"  \n" + json.dumps(records).encode()) == decode_body(ndjson(records))


def test_blank_lines_are_skipped_but_counted_in_line_numbers() -> None:
    body = ndjson([record(1)]) + b"\n   \n" + b"{nope\n" + ndjson([record(2)])
    with pytest.raises(BadRecord, match=r"^line 4: .*'\{nope'"):
        decode_body(body)
    assert len(decode_body(b"\n" + ndjson([record(1)]) + b"\n\n")) == 1


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "object"),
        (b'{"message": 5}', "message"),
        (b'{"severity": "loud"}', "severity"),
    ],
)
def test_the_first_bad_line_fails_the_whole_body_naming_it(line: bytes, why: str) -> None:
    lines = ndjson([record(n) for n in range(9)]).splitlines(keepends=True)
    lines[6] = line + b"\n"
    with pytest.raises(BadRecord, match=rf"^line 7: .*{why}"):
        decode_body(b"".join(lines))


def test_a_bad_array_element_is_named_by_its_index() -> None:
    body = json.dumps([record(0), record(1), "x"]).encode()
    with pytest.raises(BadRecord, match=r"^record 2 \(from 0\) of the array: "):
        decode_body(body)
    with pytest.raises(BadRecord, match="not a JSON array"):
        decode_body(b"[" + ndjson([record(0)]))


def test_empty_bodies_have_no_records() -> None:
    assert decode_body(b"") == decode_body(b"\n\n") == decode_body(b"[]") == []


def test_gzip_inflates_within_the_limit() -> None:
    body = ndjson([record(n) for n in range(100)])
    assert inflate(gzip.compress(body), len(body)) == body
    # Concatenated members are one body, as gzip -d reads them (RFC 1952 2.2).
    assert inflate(gzip.compress(body) + gzip.compress(body), 2 * len(body)) == body * 2


def test_a_gzip_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b" " * 50_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(BodyTooLarge):
        inflate(bomb, 1_000_000)
    with pytest.raises(BodyTooLarge):  # one byte over
        inflate(gzip.compress(b"x" * 1001), 1000)


@pytest.mark.parametrize(
    ("body", "why"),
    [(b"plain text", "not valid gzip"), (gzip.compress(b"x" * 1000)[:-12], "truncated")],
)
def test_a_body_that_is_not_gzip_is_a_bad_request(body: bytes, why: str) -> None:
    with pytest.raises(BadRecord, match=why):
        inflate(body, 1 << 20)


@given(st.binary(max_size=300))
def test_any_bytes_give_messages_or_a_parse_error(body: bytes) -> None:
    with contextlib.suppress(ParseError):
        decode_body(body)
    with contextlib.suppress(ParseError):
        inflate(body, 1000)
