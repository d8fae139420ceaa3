"""relay/policy/redact.py with plain bytes: every secret masked, every other byte kept."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ConfigError
from relay.policy.redact import BUILTIN, Redactor, builtin_rule, custom_rule, redactor
from relay.protocol import rfc5424

H5424 = b"<38>1 2024-05-06T12:34:56.123Z web01 sshd 4242 AUTH - "
H3164 = b"<38>Oct 11 22:14:15 web01 sshd[4242]: "

# (message, redacted, {rule: count}); every byte not in a secret is unchanged.
CORPUS = [
    # cards: Luhn passes (masked, last 4 kept) or fails (kept)
    (
        H5424 + b"charge card=4111111111111111 ok",
        H5424 + b"charge card=************1111 ok",
        {"card": 1},
    ),
    (
        H5424 + b"pan 4111 1111 1111 1111 exp 12/27",
        H5424 + b"pan **** **** **** 1111 exp 12/27",
        {"card": 1},
    ),
    (H5424 + b"pan 5500-0000-0000-0004.", H5424 + b"pan ****-****-****-0004.", {"card": 1}),
    (H5424 + b"amex 3782 822463 10005 paid", H5424 + b"amex **** ****** *0005 paid", {"card": 1}),
    (H5424 + b"order 4111111111111112 failed Luhn", None, {}),
    (H5424 + b"ts=1700000000123 id=9999999999999999999999", None, {}),
    # credentials: key=value, key: value, URL query, JSON, URL userinfo
    (
        H3164 + b"login user=bob password=hunter2 ok",
        H3164 + b"login user=bob password=*** ok",
        {"credentials": 1},
    ),
    (H3164 + b"passwd: s3cr3t!", H3164 + b"passwd: ***", {"credentials": 1}),
    (H3164 + b'DB_PASSWORD="a b c" next', H3164 + b'DB_PASSWORD="***" next', {"credentials": 1}),
    (
        H5424 + b"GET /cb?code=1&client_secret=xyz&state=2 200",
        H5424 + b"GET /cb?code=1&client_secret=***&state=2 200",
        {"credentials": 1},
    ),
    (
        H5424 + b'{"user":"bob","password": "p\\"w d","n":1}',
        H5424 + b'{"user":"bob","password": "***","n":1}',
        {"credentials": 1},
    ),
    (
        H5424 + b"connect postgres://app:Xy9z@db.internal:5432/main",
        H5424 + b"connect postgres://app:***@db.internal:5432/main",
        {"credentials": 1},
    ),
    (
        H5424 + b"refresh access_token=eyJ.a.b expires_in=3600",
        H5424 + b"refresh access_token=*** expires_in=3600",
        {"credentials": 1},
    ),
    # bearer tokens, AWS keys
    (
        H5424 + b"hdr Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-_x= end",
        H5424 + b"hdr Authorization: Bearer *** end",
        {"bearer": 1},
    ),
    (
        H5424 + b"aws key=AKIAIOSFODNN7EXAMPLE region",
        H5424 + b"aws key=AKIA**************** region",
        {"aws_key": 1},
    ),
    (H5424 + b"sts ASIAY34FZKBOKMUTVV7A,", H5424 + b"sts ASIA****************,", {"aws_key": 1}),
    # e-mail
    (
        H3164 + b"mail from=<alice.smith+x@mail.example.co.uk> sent",
        H3164 + b"mail from=<***@mail.example.co.uk> sent",
        {"email": 1},
    ),
    # IPv4 / IPv6, mmanon zero mode with its default bits (16, 96)
    (
        H3164 + b"Failed password for root from 203.0.113.77 port 22",
        H3164 + b"Failed password for root from 203.0.0.0 port 22",
        {"ipv4": 1},
    ),
    (H3164 + b"peer 10.1.12.123:5514 closed", H3164 + b"peer 10.1.0.0:5514 closed", {"ipv4": 1}),
    (
        H3164 + b"from 2001:DB8:85a3::8a2e:370:7334 via [fe80::1]:22",
        H3164 + b"from 2001:db8:0:0:0:0:0:0 via [fe80:0:0:0:0:0:0:0]:22",
        {"ipv6": 2},
    ),
    (H3164 + b"mapped ::ffff:192.0.2.1 ok", H3164 + b"mapped 0:0:0:0:0:0:0.0.0.0 ok", {"ipv6": 1}),
    (H3164 + b"at 12:34:56 mac 00:1a:2b:3c:4d:5e std::vector v1.2.3 999.1.1.1", None, {}),
]


@pytest.mark.parametrize(("raw", "expected", "counts"), CORPUS)
def test_corpus(raw: bytes, expected: bytes | None, counts: dict[str, int]) -> None:
    r = redactor(BUILTIN)
    out = r.redact([raw])
    if expected is None:
        assert out[0] is raw
    else:
        assert out[0] == expected
    assert {k: v for k, v in r.counts.items() if v} == counts


def test_header_and_structured_data_untouched_by_default() -> None:
    raw = (
        b'<38>1 2024-05-06T12:34:56Z 10.1.2.3 app - - [auth@32473 password="x" ip="10.9.9.9"]'
        b" from 10.9.9.9"
    )
    out = redactor(BUILTIN).redact_one(raw)
    assert out == raw[: -len(b"10.9.9.9")] + b"10.9.0.0"


def test_structured_data_when_the_rule_says_so() -> None:
    rules = [
        builtin_rule("credentials", structured_data=True),
        builtin_rule("ipv4", structured_data=True),
    ]
    r = Redactor(rules)
    raw = b'<38>1 - host app - - [auth@32473 password="a\\"b" ip="10.9.9.9" n="1"] msg'
    out = r.redact_one(raw)
    assert out == b'<38>1 - host app - - [auth@32473 password="***" ip="10.9.0.0" n="1"] msg'
    assert rfc5424.parse(out).structured_data[0].params[0] == ("password", "***")
    assert r.counts == {"credentials": 1, "ipv4": 1}


def test_ip_bits_as_mmanon() -> None:
    r = Redactor([builtin_rule("ipv4", ipv4_bits=8), builtin_rule("ipv6", ipv6_bits=64)])
    assert (
        r.redact_one(b"a 10.1.12.123 2001:db8:1:2:3:4:5:6") == b"a 10.1.12.0 2001:db8:1:2:0:0:0:0"
    )


def test_custom_rule() -> None:
    r = Redactor([custom_rule("ssn", r"\b(\d{3})-\d{2}-\d{4}\b", r"\1-XX-XXXX")])
    raw = H3164 + b"ssn 123-45-6789 ok"
    assert r.redact_one(raw) == H3164 + b"ssn 123-XX-XXXX ok"
    assert r.counts == {"ssn": 1}


@pytest.mark.parametrize(
    ("pattern", "replacement", "key", "message"),
    [
        ("a(b", "x", "pattern", "at position 2"),
        ("éé(b", "x", "pattern", "at position 3:"),  # characters, not UTF-8 bytes
        ("a", r"\2", "replace", "bad replacement"),
    ],
)
def test_custom_rule_errors(pattern: str, replacement: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        custom_rule("bad", pattern, replacement)
    assert caught.value.key == key


def test_clean_batch_is_the_same_object() -> None:
    r = redactor(BUILTIN)
    batch = [H5424 + b"GET /index.html 200 5123 rt=0.004", H3164 + b"session opened"]
    out = r.redact(batch)
    assert out is batch
    assert all(a is b for a, b in zip(out, batch, strict=True))
    assert set(r.counts.values()) == {0}


def test_only_changed_messages_are_new() -> None:
    clean = H3164 + b"nothing here"
    out = redactor(BUILTIN).redact([clean, H3164 + b"password=x"])
    assert out[0] is clean and out[1] == H3164 + b"password=***"


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters='"\\]'), max_size=20)
_secrets = st.sampled_from(
    [
        "password=hunter2",
        '"token": "abc"',
        "4111 1111 1111 1111",
        "10.1.2.3",
        "fe80::1",
        "Bearer abc.def",
        "AKIAIOSFODNN7EXAMPLE",
        "bob@example.com",
        "x://u:p@h",
        "plain",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    sd_value=st.one_of(_text, _secrets),
    words=st.lists(st.one_of(_secrets, st.text(max_size=10)), max_size=6),
    sd_rules=st.booleans(),
)
def test_redacted_rfc5424_still_parses(sd_value: str, words: list[str], sd_rules: bool) -> None:
    value = sd_value.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"]", b"\\]")
    sd = b'[x@32473 password="%s" v="%s"]' % (value, value)
    raw = b"<38>1 2024-05-06T12:34:56Z 10.1.2.3 app 1 ID " + sd + b" " + " ".join(words).encode()
    before = rfc5424.parse(raw)
    rules = [builtin_rule(n, structured_data=sd_rules) for n in BUILTIN]
    after = rfc5424.parse(Redactor(rules).redact_one(raw))
    assert after.pri == before.pri and after.timestamp == before.timestamp
    assert (after.hostname, after.app_name, after.procid, after.msgid) == (
        before.hostname,
        before.app_name,
        before.procid,
        before.msgid,
    )
    if not sd_rules:
        assert after.structured_data == before.structured_data
    else:
        assert [p[0] for p in after.structured_data[0].params] == ["password", "v"]
