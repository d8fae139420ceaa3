"""Tests of relay.protocol.rfc3164: the tolerant BSD parser and the formatter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import LocalProtocolError, ParseError
from relay.protocol import rfc3164
from relay.protocol.syslog import Facility, Severity, SyslogMessage
from tests.branches import Branches

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def _ts(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


# --- corpus of what real senders send -------------------------------------------------


def case(
    case_id: str,
    raw: bytes,
    *,
    host: str | None = None,
    app: str | None = None,
    pid: str | None = None,
    msg: bytes,
    ts: datetime | None = None,
) -> object:
    """One corpus entry: the raw message and the fields we expect from it."""
    return pytest.param(raw, host, app, pid, msg, ts, id=case_id)


_CISCO_SEQ = b"123: *Mar  1 18:46:11.123: %SYS-5-CONFIG_I: Configured from console by console"
_CISCO_LINK = b"%LINK-3-UPDOWN: Interface GigabitEthernet0/1, changed state to up"
_CISCO_PROTO = b"%LINEPROTO-5-UPDOWN: Line protocol on Interface Gi0/1, changed state to down"
_FORTIGATE = (
    b"date=2026-11-22 time=00:00:00 devname=fw1 devid=FG100E type=traffic "
    b'subtype=forward level=notice srcip=192.0.2.1 action="accept"'
)
_FILTERLOG = (
    b"5,,,1000000103,igb0,match,block,in,4,0x0,,64,0,0,DF,6,tcp,60,192.0.2.1,192.0.2.2,"
    b"52000,22,0,S,1,,64240,,mss"
)
_SSHD = b"Accepted publickey for alice from 192.0.2.5 port 50000 ssh2"
_SNARE = (
    b"1\tSecurity\t42\tSun Nov 22 00:00:00 2026\t4624\tMicrosoft-Windows-Security-Auditing"
    b"\tN/A\tN/A\tSuccess Audit\twinhost\tLogon\t\tAn account was successfully logged on.\t1"
)
_NXLOG = b"An account was successfully logged on.\tSubject:\tSecurity ID:\tS-1-5-18"
_NXLOG_SCM = (
    b"WINSRV01 Service Control Manager[448]: The Windows Update service entered the running state."
)
_KERNEL = b"[    1.234567] usb 1-1: new high-speed USB device"
_SU = b"'su root' failed for lonvick on /dev/pts/8"
_DONUTS = (
    b"%% It's time to make the do-nuts.  %%  Ingredients: Mix=OK, Jelly=OK # Devices: "
    b"Mixer=OK, Jelly_Injector=OK, Frier=OK # Transport: Conveyer1=OK, Conveyer2=OK # %%"
)
_FOLKS = b"1990 Oct 22 10:52:01 TZ-6 scapegoat.dmz.example.org 10.1.2.3 sched[0]: That's All Folks!"
_NOV22 = _ts(11, 22)
_PLUS_1 = timezone(timedelta(hours=1))

CORPUS = [
    # util-linux logger(1): to the network with HOSTNAME, to /dev/log without.
    case("logger-network", b"<13>Nov 22 00:00:00 myhost root: hello",
         host="myhost", app="root", msg=b"hello", ts=_NOV22),
    case("logger-dev-log", b"<13>Nov 22 00:00:00 root: hello",
         app="root", msg=b"hello", ts=_NOV22),
    case("logger-dev-log-pid", b"<13>Nov 22 00:00:00 root[123]: hello",
         app="root", pid="123", msg=b"hello", ts=_NOV22),
    # Cisco IOS. With sequence numbers and "*" (clock not set) nothing we trust
    # precedes the text, so it all stays MSG; with "service timestamps log datetime
    # year" the year sits inside the timestamp and ": " follows it. "%FAC-SEV-MNEMONIC:"
    # is a message mnemonic, not a TAG.
    case("cisco-sequence-number", b"<189>" + _CISCO_SEQ, msg=_CISCO_SEQ),
    case("cisco-year", b"<189>Nov 22 2026 00:01:02: " + _CISCO_LINK,
         msg=_CISCO_LINK, ts=datetime(2026, 11, 22, 0, 1, 2, tzinfo=UTC)),
    case("cisco-msec", b"<187>Nov 22 00:01:02.345: " + _CISCO_PROTO,
         msg=_CISCO_PROTO, ts=datetime(2026, 11, 22, 0, 1, 2, 345000, tzinfo=UTC)),
    # FortiGate: no BSD header at all, the whole body is key=value MSG.
    case("fortigate", b"<189>" + _FORTIGATE, msg=_FORTIGATE),
    # pfSense / FreeBSD syslogd: no HOSTNAME; with one when forwarded.
    case("pfsense-filterlog", b"<134>Nov 22 00:00:00 filterlog[123]: " + _FILTERLOG,
         app="filterlog", pid="123", msg=_FILTERLOG, ts=_NOV22),
    case("freebsd-hostname", b"<38>Nov 22 00:00:00 fbsd1.example.org sshd[4567]: " + _SSHD,
         host="fbsd1.example.org", app="sshd", pid="4567", msg=_SSHD, ts=_NOV22),
    case("postfix-slash-tag", b"<22>Nov 22 00:00:00 mail postfix/smtpd[9]: connect from x",
         host="mail", app="postfix/smtpd", pid="9", msg=b"connect from x", ts=_NOV22),
    # busybox syslogd/logger: no HOSTNAME, day padded with a space.
    case("busybox-udhcpc", b"<30>Nov  3 01:02:03 udhcpc[1234]: sending discover",
         app="udhcpc", pid="1234", msg=b"sending discover", ts=_ts(11, 3, 1, 2, 3)),
    case("busybox-kernel", b"<6>Nov  3 01:02:03 kernel: " + _KERNEL,
         app="kernel", msg=_KERNEL, ts=_ts(11, 3, 1, 2, 3)),
    # Windows agents: Snare's TAB-separated record, NXLog's BSD output with TABs in MSG.
    # A Windows source name with spaces is no TAG, so its HOSTNAME is not trusted either.
    case("snare-tabs", b"<13>Nov 22 00:00:00 winhost MSWinEventLog\t" + _SNARE,
         host="winhost", app="MSWinEventLog", msg=_SNARE, ts=_NOV22),
    case("nxlog", b"<14>Nov 22 00:00:00 WINSRV01 Microsoft-Windows-Security-Auditing[560]: "
         + _NXLOG, host="WINSRV01", app="Microsoft-Windows-Security-Auditing", pid="560",
         msg=_NXLOG, ts=_NOV22),
    case("nxlog-source-with-spaces", b"<14>Nov 22 00:00:00 " + _NXLOG_SCM,
         msg=_NXLOG_SCM, ts=_NOV22),
    # No header: never take the first word as hostname.
    case("poor-form", b"<13>Poor form is punished", msg=b"Poor form is punished"),
    case("pri-only", b"<13>", msg=b""),
    case("hello-world", b"<13>hello world", msg=b"hello world"),
    case("tag-without-timestamp", b"<13>tag[1]: text", msg=b"tag[1]: text"),
    # RFC 3164 §5.4 examples. Only the first meets our HOSTNAME rule: in the second
    # no TAG follows the address, in the third "CST" is followed by "1987", and the
    # fourth has no BSD timestamp first. Their words stay in MSG.
    case("3164-5.4-example-1", b"<34>Oct 11 22:14:15 mymachine su: " + _SU,
         host="mymachine", app="su", msg=_SU, ts=_ts(10, 11, 22, 14, 15)),
    case("3164-5.4-example-2", b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
         msg=b"10.0.0.99 Use the BFG!", ts=_ts(2, 5, 17, 32, 18)),
    case("3164-5.4-example-3", b"<165>Aug 24 05:34:00 CST 1987 mymachine myproc[10]: " + _DONUTS,
         msg=b"CST 1987 mymachine myproc[10]: " + _DONUTS, ts=_ts(8, 24, 5, 34)),
    case("3164-5.4-example-4", b"<0>" + _FOLKS, msg=_FOLKS),
    # An RFC 3339 timestamp instead of the BSD one (rsyslog forwarding templates).
    case("rfc3339-timestamp", b"<13>2026-11-22T00:00:00.123456+01:00 myhost app[1]: x",
         host="myhost", app="app", pid="1", msg=b"x",
         ts=datetime(2026, 11, 22, 0, 0, 0, 123456, tzinfo=_PLUS_1)),
    # HOSTNAME: IP literals yes; not RFC 1123, or no TAG after it: stays in MSG.
    case("ipv4-host", b"<13>Nov 22 00:00:00 192.0.2.1 app: x",
         host="192.0.2.1", app="app", msg=b"x", ts=_NOV22),
    case("ipv6-host", b"<13>Nov 22 00:00:00 2001:db8::1 app[7]: x",
         host="2001:db8::1", app="app", pid="7", msg=b"x", ts=_NOV22),
    case("underscore-host", b"<13>Nov 22 00:00:00 WIN_SRV01 app: x",
         msg=b"WIN_SRV01 app: x", ts=_NOV22),
    case("bad-ipv4-host", b"<13>Nov 22 00:00:00 1.2.3.999 app: x",
         msg=b"1.2.3.999 app: x", ts=_NOV22),
    case("host-without-tag", b"<13>Nov 22 00:00:00 myhost hello world",
         msg=b"myhost hello world", ts=_NOV22),
    case("colon-without-space", b"<13>Nov 22 00:00:00 myhost tag:value",
         msg=b"myhost tag:value", ts=_NOV22),
    case("tag-with-empty-msg", b"<13>Nov 22 00:00:00 myhost app:",
         host="myhost", app="app", msg=b"", ts=_NOV22),
    case("word-colon-is-a-tag", b"<13>Nov 22 00:00:00 myhost: hello",
         app="myhost", msg=b"hello", ts=_NOV22),
    # Timestamp shapes.
    case("unpadded-day", b"<13>Nov 3 00:00:00 myhost app: x",
         host="myhost", app="app", msg=b"x", ts=_ts(11, 3)),
    case("zero-padded-day", b"<13>Nov 03 00:00:00 myhost app: x",
         host="myhost", app="app", msg=b"x", ts=_ts(11, 3)),
    case("timestamp-only", b"<13>Nov 22 00:00:00", msg=b"", ts=_NOV22),
    case("impossible-date", b"<13>Nov 31 00:00:00 myhost app: x",
         msg=b"Nov 31 00:00:00 myhost app: x"),
    case("junk-after-time", b"<13>Nov 22 00:00:00x myhost app: x",
         msg=b"Nov 22 00:00:00x myhost app: x"),
    case("lowercase-month", b"<13>nov 22 00:00:00 myhost app: x",
         msg=b"nov 22 00:00:00 myhost app: x"),
    case("msg-bytes-exact", b"<13>Nov 22 00:00:00 myhost app[1]: a\x00b\nc\xff\xfe",
         host="myhost", app="app", pid="1", msg=b"a\x00b\nc\xff\xfe", ts=_NOV22),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "hostname", "app_name", "procid", "msg", "timestamp"), CORPUS)
def test_corpus(
    raw: bytes,
    hostname: str | None,
    app_name: str | None,
    procid: str | None,
    msg: bytes,
    timestamp: datetime | None,
) -> None:
    message = rfc3164.parse(raw, now=NOW)
    assert (message.hostname, message.app_name, message.procid) == (hostname, app_name, procid)
    assert message.msg == msg
    assert message.timestamp == timestamp
    if timestamp is not None:
        assert message.timestamp is not None
        assert message.timestamp.utcoffset() == timestamp.utcoffset()
    assert message.version == 0
    assert message.msgid is None and message.structured_data == ()


def test_pri_is_split() -> None:
    message = rfc3164.parse(b"<189>x", now=NOW)
    assert (message.facility, message.severity, message.pri) == (
        Facility.local7,
        Severity.notice,
        189,
    )


@pytest.mark.parametrize("raw", [b"", b"Nov 22 00:00:00 host app: x", b"<192>x", b"<01>x"])
def test_without_valid_pri_raises(raw: bytes) -> None:
    with pytest.raises(ParseError, match="PRI"):
        rfc3164.parse(raw, now=NOW)


# --- the year of a BSD timestamp ---------------------------------------------------


@pytest.mark.parametrize(
    ("now", "stamp", "expected"),
    [
        (NOW, b"Nov 22 00:00:00", datetime(2026, 11, 22, tzinfo=UTC)),
        (NOW, b"Nov 24 11:59:59", datetime(2026, 11, 24, 11, 59, 59, tzinfo=UTC)),
        (NOW, b"Nov 24 12:00:01", datetime(2025, 11, 24, 12, 0, 1, tzinfo=UTC)),
        (NOW, b"Dec 25 00:00:00", datetime(2025, 12, 25, tzinfo=UTC)),
        (
            datetime(2027, 1, 1, 0, 0, 10, tzinfo=UTC),
            b"Dec 31 23:59:59",
            datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
        ),
        (
            datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC),
            b"Jan  1 00:00:05",
            datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC),
        ),
        (
            datetime(2028, 3, 1, tzinfo=UTC),
            b"Feb 29 12:00:00",
            datetime(2028, 2, 29, 12, tzinfo=UTC),
        ),
        (
            datetime(2029, 1, 5, tzinfo=UTC),
            b"Feb 29 12:00:00",
            datetime(2028, 2, 29, 12, tzinfo=UTC),
        ),
        (datetime(2027, 3, 1, tzinfo=UTC), b"Feb 29 12:00:00", None),
        (datetime(2026, 11, 23, 12), b"Nov 22 00:00:00", datetime(2026, 11, 22, tzinfo=UTC)),
        (NOW, b"Nov 22 2019 00:00:00", datetime(2019, 11, 22, tzinfo=UTC)),
        (NOW, b"Nov 22 2030 00:00:00", datetime(2030, 11, 22, tzinfo=UTC)),
    ],
    ids=[
        "this-year",
        "just-under-a-day-ahead",
        "over-a-day-ahead-is-last-year",
        "december-read-in-november",
        "new-year-read-late",
        "new-year-from-fast-clock",
        "leap-day",
        "leap-day-last-year",
        "leap-day-nowhere",
        "naive-now-is-utc",
        "explicit-year-past",
        "explicit-year-future-kept",
    ],
)
def test_year_inference(now: datetime, stamp: bytes, expected: datetime | None) -> None:
    message = rfc3164.parse(b"<13>" + stamp + b" myhost app: x", now=now)
    assert message.timestamp == expected
    if expected is None:
        assert message.hostname is None and message.msg == stamp + b" myhost app: x"


@pytest.mark.parametrize(
    ("stamp", "microsecond"),
    [(b".1", 100000), (b".123456", 123456), (b".123456789", 123456)],
    ids=["one-digit", "micro", "nano-truncated"],
)
def test_bsd_fraction(stamp: bytes, microsecond: int) -> None:
    message = rfc3164.parse(b"<13>Nov 22 00:00:00" + stamp + b" h app: x", now=NOW)
    assert message.timestamp == datetime(2026, 11, 22, 0, 0, 0, microsecond, tzinfo=UTC)


@pytest.mark.parametrize(
    "stamp", [b".", b".1234567890", b".x"], ids=["dot", "ten-digits", "letter"]
)
def test_bad_bsd_fraction_stays_msg(stamp: bytes) -> None:
    message = rfc3164.parse(b"<13>Nov 22 00:00:00" + stamp + b" h app: x", now=NOW)
    assert message.timestamp is None
    assert message.msg.startswith(b"Nov 22")


# --- format ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "raw"),
    [
        (
            SyslogMessage(
                Facility.user,
                Severity.notice,
                timestamp=_ts(11, 22),
                hostname="myhost",
                app_name="root",
                msg=b"hello",
            ),
            b"<13>Nov 22 00:00:00 myhost root: hello",
        ),
        (
            SyslogMessage(
                Facility.local7,
                Severity.notice,
                timestamp=_ts(11, 3, 1, 2, 3),
                app_name="udhcpc",
                procid="1234",
                msg=b"sending discover",
            ),
            b"<189>Nov  3 01:02:03 udhcpc[1234]: sending discover",
        ),
        (
            SyslogMessage(
                Facility.user,
                Severity.notice,
                timestamp=datetime(
                    2026, 11, 22, 1, 30, 0, 999999, tzinfo=timezone(timedelta(hours=2))
                ),
                hostname="h",
                msg=b"x",
            ),
            b"<13>Nov 21 23:30:00 h x",
        ),
        (
            SyslogMessage(Facility.user, Severity.notice, hostname="h", app_name="a", msg=b"m"),
            b"<13>m",
        ),
        (
            SyslogMessage(Facility.kern, Severity.emerg, timestamp=_ts(1, 1), procid="1", msg=b"m"),
            b"<0>Jan  1 00:00:00 m",
        ),
        (SyslogMessage(Facility.user, Severity.notice), b"<13>"),
    ],
    ids=[
        "logger",
        "busybox-padded-day",
        "converted-to-utc",
        "no-timestamp",
        "pid-without-tag",
        "empty",
    ],
)
def test_format(message: SyslogMessage, raw: bytes) -> None:
    assert rfc3164.format(message) == raw


@pytest.mark.parametrize(
    "fields",
    [
        {"timestamp": datetime(2026, 1, 1)},
        {"timestamp": _ts(1, 1), "hostname": "my host"},
        {"timestamp": _ts(1, 1), "app_name": "caf\u00e9"},
        {"timestamp": _ts(1, 1), "app_name": "a", "procid": "1 2"},
    ],
    ids=["naive-timestamp", "space-in-host", "non-ascii-tag", "space-in-pid"],
)
def test_format_rejects(fields: dict[str, object]) -> None:
    message = SyslogMessage(Facility.user, Severity.notice, **fields)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        rfc3164.format(message)


# --- hypothesis -----------------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_label = st.text(_LETTERS + "0123456789-", min_size=1, max_size=12).filter(
    lambda label: label[0] != "-" and label[-1] != "-"
)
_hosts = st.one_of(
    st.builds(
        lambda labels, tld: ".".join([*labels, tld]),
        st.lists(_label, max_size=3),
        st.text(_LETTERS, min_size=1, max_size=6),
    ),
    st.ip_addresses().map(str),
)
_tags = st.text(_LETTERS + "0123456789-_./@()", min_size=1, max_size=rfc3164.MAX_TAG)
_bsd_timestamps = st.datetimes(
    min_value=NOW.replace(tzinfo=None) - timedelta(days=300),
    max_value=NOW.replace(tzinfo=None) + timedelta(hours=23),
).map(lambda dt: dt.replace(microsecond=0, tzinfo=UTC))

_bsd_messages = st.builds(
    SyslogMessage,
    facility=st.sampled_from(Facility),
    severity=st.sampled_from(Severity),
    version=st.just(0),
    timestamp=_bsd_timestamps,
    hostname=st.none() | _hosts,
    app_name=_tags,  # a HOSTNAME is only recognised before a TAG
    procid=st.none() | st.integers(0, 2**22).map(str),
    msg=st.binary(max_size=200),
)


@settings(max_examples=300, deadline=None)
@given(_bsd_messages)
def test_round_trip(message: SyslogMessage) -> None:
    assert rfc3164.parse(rfc3164.format(message), now=NOW) == message


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 191), st.binary(max_size=300))
def test_never_raises_after_valid_pri(pri: int, body: bytes) -> None:
    raw = b"<%d>" % pri + body
    message = rfc3164.parse(raw, now=NOW)
    assert message.pri == pri
    assert body.endswith(message.msg)
    if message.timestamp is None:
        assert message.msg == body and message.hostname is None and message.app_name is None


_STAMP = b"Nov 22 00:00:00 "
_not_hosts = st.one_of(
    _label.map(lambda label: "-" + label),  # a label may not start with a hyphen
    st.tuples(_label, _label).map("_".join),  # nor hold an underscore
    st.just("1.2.3.999"),
)
_pids = st.integers(0, 2**22)


@st.composite
def _tails(draw: st.DrawFn) -> tuple[bytes, str | None, str | None]:
    """What follows a timestamp: a word, host or not, then a TAG or not (or any
    bytes); with the HOSTNAME and TAG a parser must find after ``_STAMP``."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=100)), None, None
    is_host = draw(st.booleans())
    word = draw(_hosts if is_host else _not_hosts)
    msg = draw(st.binary(max_size=40))
    tag = draw(_tags)
    if draw(st.booleans()):
        after = draw(st.sampled_from([b": ", b"\t", b":"]) | _pids.map(lambda pid: b"[%d]: " % pid))
        rest = tag.encode() + after + (b"" if after == b":" else msg)
        return word.encode() + b" " + rest, word if is_host else None, tag
    # Not a TAG: a word then SP, a colon not followed by SP, a PID not of digits.
    after = draw(st.sampled_from([b" ", b":x", b"[1a]: "]))
    return word.encode() + b" " + tag.encode() + after + msg, None, None


def test_hostname_only_before_a_tag() -> None:
    branches = Branches("hostname", "no hostname")

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from([_STAMP, b"Nov  3 01:02:03 h ", b""]), _tails())
    def check(prefix: bytes, tail: tuple[bytes, str | None, str | None]) -> None:
        rest, host, tag = tail
        message = rfc3164.parse(b"<13>" + prefix + rest, now=NOW)
        if prefix == _STAMP:
            assert message.hostname == host
            if host is not None:
                assert message.app_name == tag
        if message.hostname is not None:
            branches.reach("hostname")
            assert message.app_name is not None
            assert message.timestamp is not None
        else:
            branches.reach("no hostname")

    check()
    branches.assert_all_reached()
