"""relay/jsonsettings.py: the JSON keys of an output, read by relay/config.py."""

from __future__ import annotations

import textwrap

import pytest

from relay import config
from relay.errors import ConfigErrors
from relay.jsonsettings import JsonSettings

HEAD = '[input.t]\nurl = "tcp://127.0.0.1:5514"\n[output.o]\nurl = "file:///var/log/x.json"\n'


def test_json_keys_of_a_file_output() -> None:
    cfg = config.loads(
        HEAD
        + textwrap.dedent("""\
        format = "json"
        host_fields = ["kernel", "name"]
        labels = { env = "prod", "team name" = "db" }
        parse_message = "app"
        """)
    )
    (out,) = cfg.outputs
    assert out.format == "json"
    assert out.json == JsonSettings(
        host_fields=("kernel", "name"),
        labels=(("env", "prod"), ("team name", "db")),
        parse_message="app",
    )


def test_json_without_enrichment() -> None:
    (out,) = config.loads(HEAD + 'format = "json"\n').outputs
    assert out.json == JsonSettings()


@pytest.mark.parametrize(
    ("lines", "key", "says"),
    [
        ('host_fields = ["name", "ip"]', "host_fields", "unknown host field 'ip' (known: name,"),
        ('host_fields = "name"', "host_fields", "must be a list of names"),
        ('host_fields = ["name", "name"]', "host_fields", "names a field twice"),
        ("labels = { env = 1 }", "labels", "label 'env' must be a string, not int"),
        ('labels = "env=prod"', "labels", "must be a table of strings"),
        ('parse_message = "message"', "parse_message", "'message' is a field of relay's own"),
        ('parse_message = ""', "parse_message", "must be a key name"),
    ],
)
def test_json_key_mistakes(lines: str, key: str, says: str) -> None:
    text = HEAD + 'format = "json"\n' + lines + "\n"
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text, source="relay.toml")
    (error,) = caught.value.errors
    assert error.key == f"output.o.{key}"
    assert says in error.message
    assert str(error).startswith(f"relay.toml:6: output.o.{key}: ")


@pytest.mark.parametrize("fmt", ["lines", "rfc5424"])
def test_json_keys_need_format_json(fmt: str) -> None:
    text = HEAD + f'format = "{fmt}"\nlabels = {{ env = "prod" }}\n'
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text, source="relay.toml")
    (error,) = caught.value.errors
    assert str(error) == 'relay.toml:6: output.o.labels: only applies with format = "json"'


def test_json_keys_are_unknown_to_a_tcp_output() -> None:
    text = '[input.t]\nurl = "tcp://127.0.0.1:5514"\n[output.o]\nurl = "tcp://a:514"\n'
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text + 'parse_message = "app"\n', source="relay.toml")
    (error,) = caught.value.errors  # one line, not two
    assert error.key == "output.o.parse_message"
    assert "unknown setting" in error.message
