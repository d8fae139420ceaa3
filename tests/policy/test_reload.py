"""What a reload changes (relay/policy/reload.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from relay import config
from relay.policy import reload


def conf(text: str, state: str = "/tmp/s") -> config.Config:
    return config.loads(f'[relay]\nstate_dir = "{state}"\n{text}')


BASE = """
[input.a]
url = "tcp://127.0.0.1:5514"
[input.b]
url = "udp://127.0.0.1:5514"
[output.keep]
url = "tcp://127.0.0.1:1"
[output.change]
url = "tcp://127.0.0.1:2"
[output.gone]
url = "tcp://127.0.0.1:3"
"""


def test_inputs_and_outputs_by_name_and_value() -> None:
    new = BASE.replace("127.0.0.1:2", "127.0.0.1:22").replace(
        '[output.gone]\nurl = "tcp://127.0.0.1:3"', '[output.new]\nurl = "tcp://127.0.0.1:4"'
    )
    plan = reload.plan(conf(BASE), conf(new))
    assert [c.name for c in plan.outputs.kept] == ["keep"]
    assert [(old.endpoint.port, c.endpoint.port) for old, c in plan.outputs.changed] == [(2, 22)]
    assert [c.name for c in plan.outputs.added] == ["new"]
    assert [c.name for c in plan.outputs.removed] == ["gone"]
    assert [c.name for c in plan.inputs.kept] == ["a", "b"]
    assert plan.any and not plan.inputs.any and plan.restart == ()
    assert plan.describe() == (
        "inputs: 2 unchanged; outputs: added new; changed change; removed gone; 1 unchanged"
    )


def test_the_same_config_changes_nothing() -> None:
    plan = reload.plan(conf(BASE), conf(BASE))
    assert not plan.any and plan.restart == ()


def test_relay_settings_read_at_start_need_a_restart() -> None:
    old = conf(BASE)
    new = dataclasses.replace(conf(BASE, state="/tmp/other"), stop_timeout=5.0)
    plan = reload.plan(old, new)
    assert plan.restart == (
        "[relay] state_dir changed from /tmp/s to /tmp/other: that needs a restart; "
        "until then it stays as it was",
    )
    assert plan.config.state_dir == Path("/tmp/s")  # kept
    assert plan.config.stop_timeout == 5.0  # applied
    assert not plan.any
