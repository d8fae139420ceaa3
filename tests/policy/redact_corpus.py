"""Real-looking syslog lines with secrets, and what each must look like once redacted.

Plain data, shared by tests/policy/test_redact.py (relay/policy/redact.py on
bytes) and by the interop test that sends these lines through a real relay to
a real rsyslog collector. :data:`LINES` is a tuple of :class:`Line`:

``raw``
    The message as a sender writes it: RFC 5424 or RFC 3164, PRI first, no
    transport framing, no LF anywhere (not even at the end), ASCII only.
``redacted``
    What must leave relay when the output redacts with :data:`RULES` (every
    built-in rule, mmanon's default bits: IPv4 /16, IPv6 /32): ``raw`` with
    each secret masked and every other byte as it was. The header and RFC 5424
    structured data are never touched (no rule here sets structured_data).
    Equal to ``raw`` for a line with nothing secret in it.
``counts``
    How many secrets each rule masks in the line, by rule name (a rule that
    masks nothing is not listed; ``{}`` for a clean line). Redacting with only
    the rules named here gives ``redacted`` too.

The lines cover payment cards that pass the Luhn check (masked) and that fail
it (left alone), contiguous and in space or dash groups; passwords and secrets
in ``key=value``, ``key: value``, quoted, JSON, URL query and URL userinfo
forms; ``Authorization: Bearer`` tokens; AWS access keys; e-mail addresses;
IPv4 and IPv6 addresses (mmanon's zero mode); and clean lines that look a
little like secrets (times of day, MAC addresses, version numbers, SD-IDs with
``@``, ``passwordless``) which must come back byte for byte.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["LINES", "RULES", "Line"]

# The output's `redact` list the corpus is written for: every built-in rule.
RULES = ("credentials", "bearer", "aws_key", "card", "email", "ipv6", "ipv4")


class Line(NamedTuple):
    raw: bytes
    redacted: bytes
    counts: dict[str, int]


# RFC 5424 headers (no structured data) and RFC 3164 headers.
_WEB = b"<134>1 2024-05-06T12:34:56.123456+02:00 web01.example.com nginx 4242 ACCESS - "
_APP = b"<38>1 2024-05-06T12:34:56.123Z app03.example.com billing 812 PAY - "
_AUTH = b"<86>Oct 11 22:14:15 web01 sshd[4242]: "
_MAIL = b"<22>Oct  3 07:01:09 mx1 postfix/smtp[30117]: "
_CRON = b"<78>Oct 11 22:14:15 app03 backup[99]: "


def _same(raw: bytes) -> Line:
    return Line(raw, raw, {})


LINES: tuple[Line, ...] = (
    # --- payment cards: Luhn passes -> all digits but the last 4 masked ----------
    Line(
        _APP + b"charge ok order=7781 card=4111111111111111 amount=12.50 EUR",
        _APP + b"charge ok order=7781 card=************1111 amount=12.50 EUR",
        {"card": 1},
    ),
    Line(
        _APP + b"pan 4012 8888 8888 1881 exp 12/27 status=authorized",
        _APP + b"pan **** **** **** 1881 exp 12/27 status=authorized",
        {"card": 1},
    ),
    Line(
        _APP + b"card 5500-0000-0000-0004 declined: insufficient funds",
        _APP + b"card ****-****-****-0004 declined: insufficient funds",
        {"card": 1},
    ),
    Line(
        _CRON + b"amex 3782 822463 10005 charged, receipt sent",
        _CRON + b"amex **** ****** *0005 charged, receipt sent",
        {"card": 1},
    ),
    Line(
        _CRON + b"refund to 6011111111111117 and 2223000048400011 issued",
        _CRON + b"refund to ************1117 and ************0011 issued",
        {"card": 2},
    ),
    # --- payment cards: Luhn fails -> left alone -----------------------------------
    _same(_APP + b"order 4111111111111112 rejected: card number fails the Luhn check"),
    _same(_APP + b"pan 4012 8888 8888 1882 rejected by the gateway"),
    _same(_CRON + b"pan 5500-0000-0000-0005 rejected by the gateway"),
    _same(_APP + b"ts=1700000000123 trace=9999999999999999999999 span=00f067aa0ba902b7"),
    # --- passwords and secrets ------------------------------------------------------
    Line(
        _AUTH + b"login user=bob password=hunter2 from console ok",
        _AUTH + b"login user=bob password=*** from console ok",
        {"credentials": 1},
    ),
    Line(
        _CRON + b"config loaded, db_passwd: s3cr3t! retries=3",
        _CRON + b"config loaded, db_passwd: *** retries=3",
        {"credentials": 1},
    ),
    Line(
        _CRON + b'env DB_PASSWORD="correct horse battery" DB_USER=app',
        _CRON + b'env DB_PASSWORD="***" DB_USER=app',
        {"credentials": 1},
    ),
    Line(
        _CRON + b"smbclient //nas/backup pwd=Tr0ub4dor3 share=public",
        _CRON + b"smbclient //nas/backup pwd=*** share=public",
        {"credentials": 1},
    ),
    Line(
        _WEB + b"GET /oauth/callback?code=abc&client_secret=xyz123&state=2 HTTP/1.1 200 512",
        _WEB + b"GET /oauth/callback?code=abc&client_secret=***&state=2 HTTP/1.1 200 512",
        {"credentials": 1},
    ),
    Line(
        _WEB + b'POST /login body {"user":"bob","password": "p\\"w d","remember":true} 401',
        _WEB + b'POST /login body {"user":"bob","password": "***","remember":true} 401',
        {"credentials": 1},
    ),
    Line(
        _APP + b'webhook {"event":"paid","api_token":"tok_4eC39HqLyjWDarjtT1zdp7dc"} sent',
        _APP + b'webhook {"event":"paid","api_token":"***"} sent',
        {"credentials": 1},
    ),
    Line(
        _CRON + b"connecting to postgres://app:Xy9z@db.internal:5432/main",
        _CRON + b"connecting to postgres://app:***@db.internal:5432/main",
        {"credentials": 1},
    ),
    Line(
        _CRON + b"mirror ftp://bob:pa55@files.example.com/pub done",
        _CRON + b"mirror ftp://bob:***@files.example.com/pub done",
        {"credentials": 1},
    ),
    Line(
        _APP + b"refresh access_token=eyJ.a.b expires_in=3600 scope=read",
        _APP + b"refresh access_token=*** expires_in=3600 scope=read",
        {"credentials": 1},
    ),
    # --- bearer tokens ---------------------------------------------------------------
    Line(
        _WEB + b"upstream Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-_x= 12ms",
        _WEB + b"upstream Authorization: Bearer *** 12ms",
        {"bearer": 1},
    ),
    Line(
        _WEB + b"retry with header authorization: bearer abc123~+/== after 401",
        _WEB + b"retry with header authorization: bearer *** after 401",
        {"bearer": 1},
    ),
    # --- AWS access keys --------------------------------------------------------------
    Line(
        _CRON + b"aws s3 sync with key AKIAIOSFODNN7EXAMPLE region=eu-west-1",
        _CRON + b"aws s3 sync with key AKIA**************** region=eu-west-1",
        {"aws_key": 1},
    ),
    Line(
        _CRON + b"sts session ASIAY34FZKBOKMUTVV7A, expires in 3600s",
        _CRON + b"sts session ASIA****************, expires in 3600s",
        {"aws_key": 1},
    ),
    # --- e-mail addresses ------------------------------------------------------------
    Line(
        _MAIL + b"3F2A1: to=<alice.smith+news@mail.example.co.uk>, delay=0.4, status=sent",
        _MAIL + b"3F2A1: to=<***@mail.example.co.uk>, delay=0.4, status=sent",
        {"email": 1},
    ),
    # --- IPv4 / IPv6 (mmanon zero mode: /16 and /32 kept) -------------------------------
    Line(
        _AUTH + b"Failed password for root from 203.0.113.77 port 22 ssh2",
        _AUTH + b"Failed password for root from 203.0.0.0 port 22 ssh2",
        {"ipv4": 1},
    ),
    Line(
        _MAIL + b"connect to mx.example.net[198.51.100.25]:25: Connection timed out",
        _MAIL + b"connect to mx.example.net[198.51.0.0]:25: Connection timed out",
        {"ipv4": 1},
    ),
    Line(
        _AUTH + b"peer 10.1.12.123:5514 closed",
        _AUTH + b"peer 10.1.0.0:5514 closed",
        {"ipv4": 1},
    ),
    Line(
        _AUTH + b"from 2001:DB8:85a3::8a2e:370:7334 via [fe80::1]:22",
        _AUTH + b"from 2001:db8:0:0:0:0:0:0 via [fe80:0:0:0:0:0:0:0]:22",
        {"ipv6": 2},
    ),
    Line(
        _AUTH + b"mapped ::ffff:192.0.2.1 ok",
        _AUTH + b"mapped 0:0:0:0:0:0:0.0.0.0 ok",
        {"ipv6": 1},
    ),
    # An address in HOSTNAME or in structured data is not in MSG: kept.
    Line(
        b'<38>1 2024-05-06T12:34:56Z 10.1.2.3 app - - [origin ip="10.1.2.3"]'
        b" client 10.1.2.3 connected",
        b'<38>1 2024-05-06T12:34:56Z 10.1.2.3 app - - [origin ip="10.1.2.3"]'
        b" client 10.1.0.0 connected",
        {"ipv4": 1},
    ),
    Line(
        b"<38>Oct 11 22:14:15 10.0.0.1 dhcpd: DHCPACK on 10.0.7.42 to 00:1a:2b:3c:4d:5e",
        b"<38>Oct 11 22:14:15 10.0.0.1 dhcpd: DHCPACK on 10.0.0.0 to 00:1a:2b:3c:4d:5e",
        {"ipv4": 1},
    ),
    # --- several kinds in one line -----------------------------------------------------
    Line(
        _APP + b"signup bob@example.org from 192.0.2.10 card 4111-1111-1111-1111 password=pw1",
        _APP + b"signup ***@example.org from 192.0.0.0 card ****-****-****-1111 password=***",
        {"credentials": 1, "card": 1, "email": 1, "ipv4": 1},
    ),
    # --- nothing secret: byte for byte ---------------------------------------------------
    # RFC 5424 §6.5, examples 1 and 3; RFC 3164 §5.4, example 1.
    _same(
        b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 -"
        b" 'su root' failed for lonvick on /dev/pts/8"
    ),
    _same(
        b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47"
        b' [exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'
        b" An application event log entry..."
    ),
    _same(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8"),
    _same(_AUTH + b"at 12:34:56 mac 00:1a:2b:3c:4d:5e std::vector v1.2.3 999.1.1.1"),
    _same(_AUTH + b"user bob changed his password; passwordless=false token_expiry=3600"),
    _same(
        _WEB + b'GET /index.html?page=2 HTTP/1.1 200 5123 "https://www.example.com/start"'
        b' "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0" rt=0.004'
    ),
    _same(
        _CRON + b"kernel: [5003.000003] EXT4-fs (sda1): re-mounted. Opts: errors=remount-ro."
        b" load average 0.42 0.37 0.31 at 13:00:00 UTC"
    ),
    _same(_CRON + b"job 4711 done in 0.52 s, next run 2024-05-07 03:00:00, 12 files, 3.4 MB"),
)
