"""relay/policy/http.py: what an answer means, Retry-After, and the HTTP output's keys."""

from __future__ import annotations

import textwrap

import pytest

from relay import config
from relay.config import Endpoint, parse_endpoint
from relay.errors import ConfigErrors
from relay.policy import http
from relay.policy.http import HttpSettings, Verdict

V = Verdict


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, V.DELIVERED),
        (204, V.DELIVERED),
        (400, V.REJECT),
        (401, V.AUTH),
        (403, V.AUTH),
        (404, V.REJECT),
        (408, V.RETRY),
        (413, V.SPLIT),
        (422, V.REJECT),
        (429, V.RETRY),
        (500, V.RETRY),
        (502, V.RETRY),
        (503, V.RETRY),
        (301, V.REJECT),  # redirects are not followed: a config mistake
    ],
)
def test_verdict(status: int, expected: Verdict) -> None:
    assert http.verdict(status) is expected


def test_bulk_item_verdict_never_splits_or_waits_for_a_token() -> None:
    assert http.item_verdict(429) is V.RETRY
    assert http.item_verdict(503) is V.RETRY
    assert http.item_verdict(400) is V.REJECT
    assert http.item_verdict(409) is V.REJECT
    assert http.item_verdict(413) is V.REJECT
    assert http.item_verdict(201) is V.DELIVERED


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 12 ", 12.0),
        ("86400", http.MAX_RETRY_AFTER),
        # RFC 9110 10.2.3's example date, 30 s after "now"
        ("Fri, 31 Dec 1999 23:59:59 GMT", 30.0),
        ("Fri, 31 Dec 1999 23:59:00 GMT", 0.0),  # in the past: at once
        ("soon", None),
        ("-5", None),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    now = 946684799.0 - 30  # 1999-12-31T23:59:29Z
    assert http.retry_after(value, now) == expected


def test_split_halves() -> None:
    assert http.split(2) == 1
    assert http.split(5) == 3


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://api.example.com/v1/ingest",
            Endpoint("https", "api.example.com", 443, "/v1/ingest"),
        ),
        ("http://127.0.0.1:9200/_bulk", Endpoint("http", "127.0.0.1", 9200, "/_bulk")),
        ("http://[::1]:3100", Endpoint("http", "::1", 3100, "/")),
        ("https://h/p?tenant=a", Endpoint("https", "h", 443, "/p?tenant=a")),
    ],
)
def test_http_urls_keep_their_path(url: str, expected: Endpoint) -> None:
    endpoint = parse_endpoint(url, "output")
    assert endpoint == expected
    assert parse_endpoint(endpoint.url, "output") == endpoint


def load(body: str) -> config.Config:
    return config.loads(
        '[input.t]\nurl = "tcp://127.0.0.1:5514"\n' + textwrap.dedent(body), source="r.toml"
    )


def test_http_settings_and_defaults() -> None:
    loaded = load(
        """
        [tls.api]
        ca = "/etc/ssl/certs/ca-certificates.crt"

        [output.es]
        targets = ["https://es1:9200/_bulk", "https://es2:9200/_bulk"]
        tls = "api"
        body = "es_bulk"
        index = "syslog-%Y.%m"
        gzip = true
        token_file = "/etc/relay/token"
        headers = { "X-Scope-OrgID" = "tenant1" }
        batch_max_messages = 500
        batch_max_bytes = "2 MiB"
        flush_interval = 0.5
        timeout = 10
        dead_letter = "/var/lib/relay/es.dead"
        host_fields = ["name"]
        labels = { env = "prod" }

        [output.plain]
        url = "http://127.0.0.1:8080/ingest"
        """
    )
    es, plain = loaded.outputs
    assert es.http == HttpSettings(
        body="es_bulk",
        index="syslog-%Y.%m",
        gzip=True,
        token_file="/etc/relay/token",
        headers=(("X-Scope-OrgID", "tenant1"),),
        batch_max_messages=500,
        batch_max_bytes=2 * 1024 * 1024,
        flush_interval=0.5,
        timeout=10.0,
        dead_letter="/var/lib/relay/es.dead",
    )
    assert [t.url for t in es.all_targets] == ["https://es1:9200/_bulk", "https://es2:9200/_bulk"]
    assert es.tls is not None
    assert es.json.host_fields == ("name",) and es.json.labels == (("env", "prod"),)
    assert es.writes_json and plain.writes_json
    assert plain.http == HttpSettings()
    assert plain.tls is None


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('body = "xml"', "output.o.body: must be one of"),
        ('index = "a-%Y"', 'output.o.index: only means something with body = "es_bulk"'),
        ('token_file = "token"', "output.o.token_file: must be an absolute path"),
        ('headers = { Authorization = "Bearer x" }', "put the token in a file"),
        ('headers = { "Content-Type" = "x" }', "relay sets this header itself"),
        ('headers = { "X-A" = "a\\nb" }', "may not hold a newline"),
        ("timeout = 0", "output.o.timeout: must be more than 0"),
        ("batch_max_messages = 0", "output.o.batch_max_messages: must be a whole number"),
        ("window = 5", "output.o.window: unknown setting for http:// outputs"),
        ('tls = "x"', "output.o.tls: unknown setting for http:// outputs"),
    ],
)
def test_http_mistakes_are_one_line(table: str, says: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load(f'\n[output.o]\nurl = "http://127.0.0.1:80/x"\n{table}\n')
    assert says in str(caught.value)
    assert "\n" not in str(caught.value).strip()


def test_es_index_template_is_checked() -> None:
    with pytest.raises(ConfigErrors, match="an index name may not hold"):
        load('[output.o]\nurl = "http://h:1/_bulk"\nbody = "es_bulk"\nindex = "a b"\n')


def test_http_and_https_targets_do_not_mix() -> None:
    with pytest.raises(ConfigErrors, match="all targets must share one scheme"):
        load('[output.o]\ntargets = ["http://a:1/x", "https://b:1/x"]\n')
