"""relay/policy/redact.py with plain bytes: every secret masked, every other byte kept."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ConfigError
from relay.policy.redact import (
    BUILTIN,
    CHUNK,
    Redactor,
    _msg_start,
    builtin_rule,
    custom_rule,
    redactor,
)
from relay.protocol import rfc3164, rfc5424
from relay.protocol.syslog import Facility, SDElement, Severity, SyslogMessage
from tests.policy.redact_corpus import LINES, RULES, Line

H5424 = b"<38>1 2024-05-06T12:34:56.123Z web01 sshd 4242 AUTH - "
H3164 = b"<38>Oct 11 22:14:15 web01 sshd[4242]: "
SECRET_LINES = [line for line in LINES if line.counts]


def _line_id(line: Line) -> str:
    return line.raw[-40:].decode()


def test_corpus_is_what_the_interop_test_needs() -> None:
    assert set(RULES) == set(BUILTIN)
    for line in LINES:
        assert b"\n" not in line.raw and b"\n" not in line.redacted
        assert line.raw.isascii()
        assert (line.raw == line.redacted) == (not line.counts)


@pytest.mark.parametrize("line", LINES, ids=_line_id)
def test_corpus(line: Line) -> None:
    r = redactor(RULES)
    batch = [line.raw]
    out = r.redact(batch)
    assert out[0] == line.redacted
    assert {name: n for name, n in r.counts.items() if n} == line.counts
    if not line.counts:
        assert out is batch
        assert out[0] is line.raw


@pytest.mark.parametrize("line", SECRET_LINES, ids=_line_id)
def test_corpus_with_only_its_rules(line: Line) -> None:
    r = redactor(line.counts)
    assert r.redact_one(line.raw) == line.redacted
    assert r.counts == line.counts


# What a mask writes: "*", and the digits, hex letters and separators of a
# zeroed (IPv4) or normalised (IPv6) address.
_MASK_OCTETS = frozenset(b"*0123456789abcdef:.")


def _assert_only_masked(before: bytes, after: bytes) -> None:
    """``after`` is ``before`` with some spans replaced by mask octets, nothing else.

    Every octet of ``after`` that no mask writes is one of ``before``, in order.
    """
    octets = iter(before)
    kept = [octet for octet in after if octet not in _MASK_OCTETS]
    assert all(octet in octets for octet in kept), (before, after)


@pytest.mark.parametrize("line", SECRET_LINES, ids=_line_id)
def test_corpus_changes_only_secrets(line: Line) -> None:
    # The expected values themselves.
    assert line.raw != line.redacted
    _assert_only_masked(line.raw, line.redacted)


def test_corpus_as_one_batch_across_chunks() -> None:
    # Some thousand messages: several CHUNKs, with secrets on both sides of
    # every chunk boundary; each message comes out as it does alone.
    batch = [line.raw for line in LINES] * 250
    assert sum(map(len, batch)) > 8 * CHUNK
    r = redactor(RULES)
    out = r.redact(batch)
    assert out is not batch
    assert out == [line.redacted for line in LINES] * 250
    for line in LINES:
        for name, n in line.counts.items():
            r.counts[name] -= 250 * n
    assert set(r.counts.values()) == {0}
    clean = [i for i, line in enumerate(LINES) if not line.counts]
    assert all(out[i] is batch[i] for i in clean)


def test_needle_across_two_messages_wakes_nothing() -> None:
    # "pass" + "word=1" and "10.1" + ".2.3" meet only in the joined batch.
    batch = [H3164 + b"my pass", b"word=1 10.1", b".2.3 end"]
    r = redactor(RULES)
    assert r.redact(batch) is batch
    assert set(r.counts.values()) == {0}


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


# --- hypothesis: a redacted RFC 5424 message keeps its header and structured data ---


def _msg_of(raw: bytes) -> bytes:
    if raw[raw.index(b">") + 1 :].startswith(b"1 "):
        return rfc5424.parse(raw).msg
    return rfc3164.parse(raw, now=datetime(2024, 6, 1, tzinfo=UTC)).msg


# The MSG of every corpus line with a secret, and a few fragments that look
# like secrets or like the delimiters around them.
_CORPUS_SECRETS = sorted({_msg_of(line.raw) for line in LINES if line.counts})
_FRAGMENTS = [
    *_CORPUS_SECRETS,
    *(b"password=", b"token: ", b'"secret": "', b"://u:", b"@example.com", b"Bearer "),
    *(b"4111 1111 1111 1111", b"10.1.2.3", b"fe80::1", b"AKIAIOSFODNN7EXAMPLE"),
    *(b'"', b"\\", b"]", b"[", b"=", b" ", b"-", b":", b"@"),
]
_fragments = st.sampled_from(_FRAGMENTS)
_utf8 = st.text(st.characters(codec="utf-8"), max_size=12).map(str.encode)
_msg_text = st.lists(st.one_of(_fragments, _utf8, st.binary(max_size=6)), max_size=8).map(b" ".join)
# SD-PARAM values: text with the three octets that must be escaped (§6.3.3),
# secrets next to them.
_sd_value = st.lists(
    st.one_of(_fragments, _utf8, st.sampled_from([b'"', b"\\", b"]", b'\\"', b"\\]"])),
    max_size=6,
).map(lambda parts: b"".join(parts).decode("utf-8", "replace"))


def _printusascii(max_size: int, exclude: str = "") -> st.SearchStrategy[str]:
    chars = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=exclude)
    return st.text(chars, min_size=1, max_size=max_size)


def _header_field(limit: int) -> st.SearchStrategy[str | None]:
    # PRINTUSASCII (§6), "-" being the NILVALUE; secrets in the header stay.
    looks_secret = ["10.1.2.3", "fe80::1", "bob@example.com", "password=x", "4111111111111111"]
    field = _printusascii(limit) | st.sampled_from([v for v in looks_secret if len(v) <= limit])
    return st.none() | field.filter(lambda value: value != "-")


_sd_name = _printusascii(32, exclude='=]"') | st.sampled_from(
    ["password", "db_pwd", "token", "ip", "mail", "origin@32473", "x@1.2"]
)
_sd_elements = st.builds(
    SDElement,
    _sd_name,
    st.lists(st.tuples(_sd_name, _sd_value), max_size=4).map(tuple),
)
_timestamps = st.none() | st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
_messages = st.builds(
    SyslogMessage,
    facility=st.sampled_from(Facility),
    severity=st.sampled_from(Severity),
    timestamp=_timestamps,
    hostname=_header_field(rfc5424.MAX_HOSTNAME),
    app_name=_header_field(rfc5424.MAX_APP_NAME),
    procid=_header_field(rfc5424.MAX_PROCID),
    msgid=_header_field(rfc5424.MAX_MSGID),
    structured_data=st.lists(_sd_elements, max_size=3, unique_by=lambda e: e.id).map(tuple),
    msg=_msg_text,
)


def _header(m: SyslogMessage) -> tuple[object, ...]:
    return (m.pri, m.version, m.timestamp, m.hostname, m.app_name, m.procid, m.msgid)


@settings(max_examples=500, deadline=None)
@given(message=_messages, structured_data=st.booleans())
def test_redacted_rfc5424_keeps_header_and_structured_data(
    message: SyslogMessage, structured_data: bool
) -> None:
    raw = rfc5424.format(message)
    before = rfc5424.parse(raw)
    r = Redactor([builtin_rule(name, structured_data=structured_data) for name in BUILTIN])
    out = r.redact_one(raw)
    after = rfc5424.parse(out)  # still a valid RFC 5424 message
    assert _header(after) == _header(before)
    _assert_only_masked(before.msg, after.msg)
    head = raw[: len(raw) - len(before.msg)]
    if not structured_data:
        # Header and structured data forwarded byte for byte.
        assert out.startswith(head)
        assert after.structured_data == before.structured_data
    else:
        assert [(e.id, [name for name, _ in e.params]) for e in after.structured_data] == [
            (e.id, [name for name, _ in e.params]) for e in before.structured_data
        ]
        for old, new in zip(before.structured_data, after.structured_data, strict=True):
            for (_, old_value), (_, new_value) in zip(old.params, new.params, strict=True):
                _assert_only_masked(old_value.encode(), new_value.encode())
    if out == raw:
        assert out is raw
        assert set(r.counts.values()) == {0}


def test_address_rules_over_a_whole_batch_keep_headers_and_count_each_change() -> None:
    """ipv4/ipv6 run over a batch's MSGs joined by LF: the same result as one
    message at a time, a MSG that holds LF included, and headers kept."""
    messages = [
        b"<14>1 - 10.9.8.7 app - - - from 10.1.12.123 and 2001:db8::1",
        b'<14>1 - host app - - [x@1 ip="10.1.2.3"] to 192.168.7.9',
        b"<14>1 - host app - - - two\nlines 172.16.5.4",
        b"<13>Dec  1 12:00:00 10.9.8.7 sshd[1]: from 10.1.12.123",
        b"<14>1 - host app - - - nothing here",
    ]
    together = redactor(["ipv4", "ipv6"])
    alone = redactor(["ipv4", "ipv6"])
    assert together.redact(messages) == [alone.redact([m])[0] for m in messages]
    assert together.counts == alone.counts == {"ipv6": 1, "ipv4": 4}
    redacted = together.redact(messages)
    assert redacted[0].startswith(b"<14>1 - 10.9.8.7 app")
    assert b"from 10.1.0.0 and 2001:db8:0:0:0:0:0:0" in redacted[0]
    assert redacted[2].endswith(b"two\nlines 172.16.0.0")
    assert redacted[4] is messages[4]
    without_lf = [m for m in messages if b"\n" not in m]
    assert redactor(["ipv4", "ipv6"]).redact(without_lf) == [
        alone.redact([m])[0] for m in without_lf
    ]


def test_ipv4_at_once_checks_each_header_where_the_one_before_is_short() -> None:
    """The batch is checked a message at a time even where one message's
    header fields run into the next: an address in the next one's PROCID
    stays (the batch is done address by address), one in MSG is masked."""
    messages = [
        b"<14>1 a b c",
        b"<14>1 - - - 10.9.8.7 - - from 10.1.12.123",
        b"<14>1 - host app - - - from 10.1.12.123",
    ]
    r = redactor(["ipv4"])
    assert r.redact(messages) == [
        b"<14>1 a b c",
        b"<14>1 - - - 10.9.8.7 - - from 10.1.0.0",
        b"<14>1 - host app - - - from 10.1.0.0",
    ]
    assert r.counts == {"ipv4": 2}


# --- hypothesis: the ipv4 rule over a whole batch is _IPV4 on each MSG ---

_ADDRESSY = st.lists(
    st.sampled_from(
        [
            *(b"10.1.12.123", b"1.2.3.4", b"256.1.1.1", b"1234.5.6.7", b"1.2.3.4.5", b"0.0.0.0"),
            *(b"010.001.12.123", b"1.2.00.0", b"255.255.255.255", b"1.2.3.04", b"09.1.0.0"),
            *(b"9", b"99", b"999", b".", b"..", b"a", b"_", b" ", b"\n", b"=", b":", b"-", b"["),
        ]
    ),
    max_size=14,
).map(b"".join)
_HEADS = st.sampled_from(
    [
        b"<14>1 - host app - - - ",
        b"<14>1 2024-05-06T12:34:56.123456Z 10.9.8.7 app 1 - - ",
        b'<14>1 - host app - - [x@1 ip="10.1.2.3"] ',
        b"<14>1 - host app - - [broken ",
        b"<14>1 - 1.2.3.4 a b c -",
        b"<13>Dec  1 12:00:00 10.9.8.7 sshd[1]: ",
        b"<13>Dec  1 12:00:00 host 1.2.3.4",
        b"<13>",
        b"<999>1 - h a - - - ",
        b"",
        b"1.2.3",
        # Fewer than seven spaces: a field of the at-once check runs into
        # the next message, whose header may hold an address.
        b"<14>1 a b c",
        b"<14>1 - - - 10.9.8.7 - - ",
        b"<14>1 - - - ",
    ]
)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(_HEADS, _ADDRESSY), min_size=1, max_size=6),
    st.sampled_from([16, 24, 20, 8]),
    st.booleans(),
)
def test_ipv4_over_a_batch_is_the_pattern_on_each_msg(
    parts: list[tuple[bytes, bytes]], bits: int, safe_heads: bool
) -> None:
    """A batch gets what _IPV4 and the mask give each MSG alone, whether the
    batch is one re.sub does at once (16 and 24 bits, every header a plain
    RFC 5424 one) or one the rule does address by address."""
    if safe_heads:
        parts = [(b"<14>1 - host app - - - ", text) for _, text in parts]
    messages = [head + text for head, text in parts]
    rule = builtin_rule("ipv4", ipv4_bits=bits)
    replace = rule.replace
    assert callable(replace)
    expected: list[bytes] = []
    changes = 0
    for raw in messages:  # the rule's pattern on each MSG alone: the reference
        start = _msg_start(raw)
        expected.append(raw[:start] + rule.pattern.sub(replace, raw[start:]))
        changes += sum(replace(m) != m.group() for m in rule.pattern.finditer(raw[start:]))
    r = redactor(["ipv4"], ipv4_bits=bits)
    out = r.redact(messages)
    assert out == expected
    assert r.counts["ipv4"] == changes
    assert (out is messages) == (expected == messages)
