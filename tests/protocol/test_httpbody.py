"""relay/protocol/httpbody.py: the request bodies and the _bulk answer."""

from __future__ import annotations

import json

import pytest

from relay.protocol import jsonform
from relay.protocol.httpbody import body_for, bulk_errors

MESSAGES = [
    b"<13>1 2026-12-01T23:59:59.5+02:00 h app - - - seq=0 first",
    b"<14>Dec  2 00:00:01 h app: seq=1 second",
    b"no pri at all seq=2",
]
RECEIVED = 1764633601.25  # 2025-12-02T00:00:01.25Z


def records() -> list[bytes]:
    return jsonform.encode_batch(
        MESSAGES,
        received=RECEIVED,
        peer="127.0.0.1:40000",
        input="tcp",
        creds=None,
        options=jsonform.JsonOptions(),
    )


def test_ndjson_and_array_hold_the_records() -> None:
    recs = records()
    times = [RECEIVED] * 3
    ndjson = body_for("ndjson", index="", labels={})
    lines = ndjson.encode(recs, times).split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(x) for x in lines[:-1]] == [json.loads(r) for r in recs]
    array = body_for("json_array", index="", labels={})
    assert json.loads(array.encode(recs, times)) == [json.loads(r) for r in recs]
    assert ndjson.content_type == "application/x-ndjson"
    assert array.content_type == "application/json"


def test_es_bulk_index_from_the_timestamp_in_utc_else_the_receive_time() -> None:
    body = body_for("es_bulk", index="Logs-%Y.%m.%d", labels={})
    lines = [json.loads(x) for x in body.encode(records(), [RECEIVED] * 3).splitlines()]
    actions, docs = lines[0::2], lines[1::2]
    assert (
        [a["create"]["_index"] for a in actions]
        == [
            "logs-2026.12.01",  # 23:59:59.5+02:00 is 21:59:59.5Z, lowercased
            # an RFC 3164 timestamp is read in the receiver's year and zone,
            # the unparsed message has none: its receive time
            f"logs-{docs[1]['timestamp'][:10].replace('-', '.')}",
            "logs-2025.12.02",
        ]
    )
    assert docs == [json.loads(r) for r in records()]


def test_loki_push_values_are_strings_in_nanoseconds() -> None:
    body = body_for("loki", index="", labels={"env": "prod"})
    doc = json.loads(body.encode(records(), [RECEIVED] * 3))
    (stream,) = doc["streams"]
    assert stream["stream"] == {"env": "prod"}
    assert [v[0] for v in stream["values"]] == ["1764633601250000000"] * 3
    assert [json.loads(v[1]) for v in stream["values"]] == [json.loads(r) for r in records()]
    no_labels = body_for("loki", index="", labels={})
    assert json.loads(no_labels.encode(records(), [RECEIVED] * 3))["streams"][0]["stream"] == {
        "job": "relay"
    }


def test_bulk_errors() -> None:
    ok = {"took": 3, "errors": False, "items": [{"create": {"status": 201}}] * 2}
    assert bulk_errors(json.dumps(ok).encode(), 2) == []
    mixed = {
        "errors": True,
        "items": [
            {"create": {"status": 201}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}},
            {"create": {"status": 400, "error": {"type": "mapper_parsing_exception"}}},
        ],
    }
    assert bulk_errors(json.dumps(mixed).encode(), 3) == [
        (1, 429, "es_rejected_execution_exception"),
        (2, 400, "mapper_parsing_exception"),
    ]


@pytest.mark.parametrize(
    "answer",
    [b"", b"not json", b"[]", b'{"errors":true}', b'{"errors":true,"items":[{}]}'],
)
def test_bulk_errors_on_an_answer_that_is_not_bulk(answer: bytes) -> None:
    assert bulk_errors(answer, 1) is None
