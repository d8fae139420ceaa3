"""relay/observe/fleet.py: the workers' status documents added up."""

from __future__ import annotations

from typing import Any

from relay.observe.fleet import fleet_document, merge


def output(
    delivered: int, memory: int, oldest: float | None, state: str, error: str = ""
) -> dict[str, Any]:
    return {
        "url": "tcp://c:514",
        "delivered": delivered,
        "queued": {"memory": {"messages": memory, "bytes": memory * 100}},
        "oldest_age": oldest,
        "upstream": {
            "state": state,
            "connected": ["tcp://c:514"] if state == "up" else [],
            "down_since": 50.0 if state == "down" else None,
            "last_error": error,
            "targets": [{"url": "tcp://c:514", "up": state == "up", "connected": state == "up"}],
        },
    }


def doc(pid: int, started: float, out: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "pid": pid,
        "time": 100.0 + pid,
        "started": started,
        "inputs": {"t": {"url": "tcp://0.0.0.0:514", "received": pid * 10}},
        "outputs": {"o": out},
    }


def test_counts_add_up_and_the_worst_state_wins() -> None:
    merged = merge(
        [
            doc(1, 7.0, output(5, 2, None, "up")),
            doc(2, 5.0, output(7, 3, 4.5, "down", "connection refused")),
        ]
    )
    assert merged["inputs"]["t"] == {"url": "tcp://0.0.0.0:514", "received": 30}
    out = merged["outputs"]["o"]
    assert out["delivered"] == 12
    assert out["queued"]["memory"] == {"messages": 5, "bytes": 500}
    assert out["oldest_age"] == 4.5
    assert out["upstream"]["state"] == "down"
    assert out["upstream"]["down_since"] == 50.0
    assert out["upstream"]["last_error"] == "connection refused"
    assert out["upstream"]["connected"] == ["tcp://c:514"]
    assert out["upstream"]["targets"] == [{"url": "tcp://c:514", "up": False, "connected": True}]
    assert (merged["pid"], merged["started"], merged["time"], merged["version"]) == (
        1,
        5.0,
        102.0,
        1,
    )


def test_workers_that_did_not_answer_are_listed() -> None:
    workers = [{"index": 0, "restarts": 0}, {"index": 1, "restarts": 2}]
    merged = fleet_document(
        [doc(1, 7.0, output(5, 2, None, "up")), None], workers, {"pid": 99, "started": 1.0}
    )
    assert merged["pid"] == 99 and merged["started"] == 1.0
    assert merged["outputs"]["o"]["delivered"] == 5
    assert [w["answered"] for w in merged["workers"]] == [True, False]
    assert fleet_document([None], workers[:1], {})["outputs"] == {}
