"""Redaction: masking secrets in a batch's messages before they leave.

A :class:`Redactor` holds an ordered list of :class:`Rule` values and turns a
batch's messages (``list[bytes]``) into the messages to forward, plus how many
replacements each rule made. It works on bytes and never decodes MSG.

Built-in rules (:data:`BUILTIN`, by name) and what they write:

``card``
    A payment card number: 13-19 digits, contiguous or in groups of 4 (or
    Amex's 4-6-5) split by one space or dash, first digit 2-6 (the card
    brands' ranges; a 13-digit epoch in milliseconds starts with 1), masked
    only when the Luhn check passes: every digit but the last 4 becomes ``*``,
    separators stay (``4111 1111 1111 1111`` -> ``**** **** **** 1111``).
``credentials``
    The value after a key ending in ``password``, ``passwd``, ``pwd``,
    ``secret`` or ``token`` (any case, e.g. ``db_password``, ``client_secret``)
    in ``key=value``, ``key: value``, URL query (``?password=x&``) and JSON
    (``"password": "x"``) forms becomes ``***`` (quotes kept); the password
    of a URL's userinfo too (``ftp://bob:x@host`` -> ``ftp://bob:***@host``).
``bearer``
    ``Bearer <token68>`` (as in ``Authorization: Bearer ...``) -> ``Bearer ***``.
``aws_key``
    An AWS access key id (``AKIA``/``ASIA`` and 16 upper-case letters or
    digits): the 16 become ``*``, the prefix that says its kind stays.
``email``
    ``local@domain.tld`` -> ``***@domain.tld``.
``ipv4``, ``ipv6``
    As rsyslog's mmanon in its default ``zero`` mode: the low ``bits`` of
    the address become zero (defaults 16 and 96, mmanon's ``ipv4.bits`` and
    ``ipv6.bits``), ``10.1.12.123`` -> ``10.1.0.0``. An IPv6 address comes
    out in mmanon's normalized form (8 groups, no ``::``, no leading zeros,
    lower case; an embedded IPv4 stays dotted, its bits zeroed the same way):
    ``2001:DB8::8a2e:370:7334`` -> ``2001:db8:0:0:0:0:0:0``. An IPv4 octet
    the mask leaves whole is written as it came (``010.1.12.123`` ->
    ``010.1.0.0``, where mmanon writes ``10.1.0.0``): re.sub can then keep it.

Custom rules (:func:`custom_rule`) are a regular expression and a
replacement template, as ``re.sub`` reads it (``\\1``, ``\\g<name>``).

Where a rule applies: MSG only, by default. For RFC 5424 that is what follows
STRUCTURED-DATA, so the header and the structured data are forwarded byte for
byte; a rule with ``structured_data=True`` is also applied to every
PARAM-VALUE (unescaped, redacted, escaped again per §6.3.3), and the
``credentials`` rule then masks the whole value of a PARAM-NAME that is a
secret key. For RFC 3164, MSG is what follows the TAG. A message that is
neither (no PRI) is redacted whole. A message whose RFC 5424 structured data
does not parse is redacted after the PRI: a secret in a broken message is
still a secret.

Cost: the work is per batch, not per message. The batch is joined a chunk
of :data:`CHUNK` octets at a time, folded once if a rule has markers (one
``bytes.translate``: case and digit values do not matter), and each rule's
needles (a few substrings or literal-led regular expressions, e.g.
``passw``/``pwd``/``secret``/``token`` for ``credentials``, ``.\\d{1,3}.\\d``
for ``ipv4``) are searched in the chunk from end to end, at C speed. A chunk
in which no needle is found costs nothing more; a hit wakes its rule for the
one message it falls in, which is then checked on its own (MSG found, the
needle looked for again in MSG: an IPv4 HOSTNAME or an ``@`` in an SD-ID
wakes nothing) before the rule's pattern runs on its MSG. A message that
wakes no rule comes back as the same object, and a batch in which nothing
changed as the same list. Each needle costs one pass over the batch, about
0.1-0.3 us per 300-byte message (bytes.find, re's scan for a literal),
the fold 0.2: that is the floor of a clean batch.

Measured with ``scripts/bench-redact`` (1,000 300-byte RFC 5424 messages of
typical text with a timestamp, a hostname and a time of day; timeit in
process, best of 60 runs, on the 2-core development machine at load 3-4),
us per message before -> after: a clean batch with all 7 rules 13.9 -> 2.3,
``ipv4`` alone 1.9 -> 0.31, ``credentials`` 2.8 -> 1.1 (4 keywords, 4
passes), ``card`` 1.6 -> 0.55, ``bearer`` 0.9 -> 0.44, ``aws_key`` 1.4 ->
0.2, ``email`` 0.8 -> 0.1, ``ipv6`` 7.1 -> 0.36 (a time of day woke it
before); one message in 10 with a secret, all 7 rules: 18.0 -> 5.2; every
message with a secret: 44.7 -> 25.2; clean messages in batches of one (the
searches then run on each message, plus a fixed cost of a few calls), all
7: 13.9 -> 5.2, ``ipv4`` 2.1 -> 1.0, ``credentials`` 3.0 -> 2.6. A woken
message costs finding its MSG (2 us for RFC 5424, more for RFC 3164, which
is parsed) and the rule's pattern, which re tries at every octet of MSG:
5-10 us on a 234-octet MSG, 18.5 for the case-insensitive ``credentials``
pattern (26 before its key was taken possessively). A custom rule has no
needles: its own regular expression is its pre-check, run on every message.

The address rules (``ipv4``, ``ipv6``, as mmanon) are the ones that wake on
most messages of a real log, so they run differently. ``ipv6``: the MSGs of
the messages it woke are joined by LF and its pattern runs once over the
whole (its classes cannot match LF, and LF satisfies its look-arounds as the
ends of a string do; a MSG holding LF falls back to one at a time).
``ipv4``, when it is the last rule and not on structured data, is not woken
at all: it runs over the whole batch after the other rules.

* With a mask of 16 or 24 bits and a batch of RFC 5424 messages without
  structured data and with nothing like an address in their headers (one
  search tells), one ``re.sub`` with a literal replacement does it in C
  (``_IPV4_AT_ONCE``: the octets kept are looked behind, the masked ones
  replaced by zeros), and the batch is split again.
* Otherwise a pattern led by a literal (the dot after the first octet) is
  scanned for over the batch joined by LF, the first octet read back from
  the dot, MSG's start found once for each message holding a match, and the
  change of each address remembered with the four octets before it.

Measured (callgrind instruction counts over a batch of 2,249 300-byte RFC
5424 messages, each with an address in MSG, ``ipv4`` alone): 40,900
instructions a message before, 16,700 address by address, about 18,000 at
once, which wins in the relay all the same (no Python call a match, fewer
objects: scripts/bench ``filtered``, relay's CPU a message 4.9 -> 3.0-4.1 us
in the same runs).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from itertools import accumulate

from relay.errors import ConfigError, ParseError
from relay.protocol import rfc3164, rfc5424
from relay.protocol.syslog import parse_pri

__all__ = [
    "BUILTIN",
    "DEFAULT_IPV4_BITS",
    "DEFAULT_IPV6_BITS",
    "Redactor",
    "Rule",
    "builtin_rule",
    "compile_pattern",
    "custom_rule",
    "redactor",
]

# mmanon's defaults: "what German data privacy rules consider as being
# sufficiently anonymized" (rsyslog doc, mmanon ipv4.bits / ipv6.bits).
DEFAULT_IPV4_BITS = 16
DEFAULT_IPV6_BITS = 96

MASK = b"***"

# A batch is searched this many octets at a time: a buffer under glibc's
# mmap threshold (128 KiB) is reused rather than faulted in afresh for each
# batch, and stays in the CPU cache across the searches. Measured on 1,000
# 300-byte messages with all 7 rules: 2.3 us per message with 16-64 KiB
# chunks, 2.7 with 4 KiB (more calls) or the whole batch at once.
CHUNK = 16 * 1024

# What the markers are searched in: case and digit values do not matter, and
# a dash is a space (a card's groups are split by either). Digits fold to "9",
# not "0": bytes.find skips ahead on an octet whose low 6 bits are not those of
# an octet of the needle, and "0" shares them with "p", "r", "s", "t" and "w"
# ("9" with "y"): the searches for "passw", "pwd" or "token" in digit-rich text
# cost 10-20% less.
FOLD = bytes(range(256)).translate(
    bytes.maketrans(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", b"abcdefghijklmnopqrstuvwxyz9999999999 "
    )
)

Replace = Callable[["re.Match[bytes]"], bytes]
# A substring or a regular expression, or (gate, needle): the needle is looked
# for only where the one octet ``gate`` is present.
Needle = bytes | re.Pattern[bytes] | tuple[bytes, bytes | re.Pattern[bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One redaction: where ``pattern`` matches, ``replace`` writes the mask.

    The rule runs on a message only when it wakes: one of ``markers`` is in
    the message folded by :data:`FOLD` (ASCII letters lower case, every digit
    ``9``, a dash a space), or one of ``probes`` is in the raw message, or it
    has at least ``colons`` colons (when nonzero), or (a custom rule, which
    has none of these) ``pattern`` finds something in it. A marker or probe
    is a :data:`Needle`: a substring or a regular expression (searched in a
    whole chunk of a batch: no anchor, no negative lookbehind), which every
    text that ``pattern`` would change must hold, so that a message without
    one comes back untouched without running ``pattern``.
    ``structured_data`` applies the rule to RFC 5424 PARAM-VALUEs too.
    ``secret_params`` (``credentials`` only): PARAM-NAMEs whose whole value
    is masked when ``structured_data`` is on.
    """

    name: str
    pattern: re.Pattern[bytes]
    replace: Replace | bytes
    markers: tuple[Needle, ...] = ()
    colons: int = 0
    structured_data: bool = False
    secret_params: re.Pattern[bytes] | None = None
    probes: tuple[Needle, ...] = ()
    # ``ipv4`` only: the mask of one address, for Redactor._redact_ipv4, and
    # the pattern and template that do it at C speed (_ipv4_at_once).
    mask_address: Callable[[bytes], bytes] | None = None
    at_once: tuple[re.Pattern[bytes], bytes] | None = None


# --- built-in rules --------------------------------------------------------------

_CARD = re.compile(
    rb"(?<![\d.])(?:"
    rb"[2-6]\d{12,18}"  # contiguous
    rb"|[2-6]\d{3}([ -])\d{4}\1\d{4}\1\d{1,7}"  # 4-4-4-x (Visa, MasterCard, ...)
    rb"|3\d{3}([ -])\d{6}\2\d{5}"  # 4-6-5 (American Express, Diners)
    rb")(?!\d|\.\d)"
)


def _luhn(digits: bytes) -> bool:
    total = 0
    for index, octet in enumerate(reversed(digits)):
        value = octet - 0x30
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _mask_card(match: re.Match[bytes]) -> bytes:
    text = match.group()
    digits = bytes(octet for octet in text if 0x30 <= octet <= 0x39)
    if not 13 <= len(digits) <= 19 or not _luhn(digits):
        return text
    keep = len(digits) - 4
    out = bytearray(text)
    seen = 0
    for index, octet in enumerate(out):
        if 0x30 <= octet <= 0x39:
            if seen < keep:
                out[index] = 0x2A  # "*"
            seen += 1
    return bytes(out)


_SECRET_KEY = rb"[\w.-]*(?:password|passwd|pwd|secret|token)"
# The same key where what follows it cannot be [\w.-] (a quote, a space, "=" or
# ":"): the whole run, taken at once, that ends in one of the words. No
# backtracking through every word of MSG: 18.5 us instead of 26 for the
# credentials pattern on a 234-octet MSG holding one password.
_WHOLE_SECRET_KEY = rb"[\w.-]*+(?:(?<=password)|(?<=passwd)|(?<=pwd)|(?<=secret)|(?<=token))"
_CREDENTIALS = re.compile(
    # JSON: "db_password": "value" (escapes inside the value kept in the match)
    rb'(?P<jk>"' + _WHOLE_SECRET_KEY + rb'"\s*:\s*")(?:[^"\\]|\\.)*(?=")'
    # key=value, key: value, ?key=value&; a quoted value keeps its quotes
    rb"|(?P<kk>(?<![\w.-])" + _WHOLE_SECRET_KEY + rb"\s*[=:]\s*)"
    rb"(?:(?P<q>[\"'])(?:(?!(?P=q)).)*(?=(?P=q))|[^\s&,;\"'<>]+)"
    # URL userinfo: scheme://user:password@
    rb"|(?P<uk>://[^\s:/@]+:)[^\s/@]+(?=@)",
    re.IGNORECASE | re.DOTALL,
)


def _mask_credentials(match: re.Match[bytes]) -> bytes:
    lead = match.group("jk") or match.group("kk") or match.group("uk") or b""
    quote = match.group("q") or b""
    return lead + quote + MASK


_BEARER = re.compile(rb"(?<![\w-])(Bearer\s+)[\w.~+/-]+=*", re.IGNORECASE)
_AWS_KEY = re.compile(rb"(?<![0-9A-Z])(A[KS]IA)[0-9A-Z]{16}(?![0-9A-Z])")
_EMAIL = re.compile(
    rb"(?<![\w.%+-])[\w.%+-]+@((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63})(?![\w-])"
)
# "Not after a word character or a dot", written after the first digit: a
# pattern that starts with a character class lets re skip to the next digit
# in C, where a leading look-behind is tried at every offset (2.1 us against
# 4.3 for a 245-byte MSG; the same matches on 200,000 random strings).
_IPV4 = re.compile(rb"\d(?<![\w.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w]|\.\d)")
# A candidate only: ipaddress decides (it knows "::", zone-less embedded IPv4, ...).
_IPV6 = re.compile(
    rb"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]*[0-9A-Fa-f:]"
    rb"(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})?(?![\w:]|\.\d)"
)


# Addresses a masker remembers: logs name the same few addresses over and
# over, and a cached one costs a dict lookup instead of 4 us of arithmetic.
# Past this many it starts afresh (bounded under a flood of distinct ones).
MASK_CACHE = 4096


def _ipv4_address_masker(bits: int) -> Callable[[bytes], bytes]:
    """``a.b.c.d`` -> the address with its low ``bits`` zeroed (itself if an octet is over 255)."""
    keep = ~((1 << bits) - 1) & 0xFFFFFFFF
    whole = (32 - bits) // 8  # octets the mask leaves as they are
    cache: dict[bytes, bytes] = {}

    def mask(address: bytes) -> bytes:
        masked = cache.get(address)
        if masked is not None:
            return masked
        octets = address.split(b".")
        if any(int(octet) > 255 for octet in octets):
            masked = address
        else:
            value = int.from_bytes(bytes(int(octet) for octet in octets), "big") & keep
            # An octet the mask leaves whole stays as written ("010" too).
            masked = b".".join(
                octets[i] if i < whole else b"%d" % octet
                for i, octet in enumerate(value.to_bytes(4, "big"))
            )
        if len(cache) >= MASK_CACHE:
            cache.clear()
        cache[address] = masked
        return masked

    return mask


def _ipv6_masker(bits: int) -> Replace:
    keep = ~((1 << bits) - 1) & ((1 << 128) - 1)

    def mask(match: re.Match[bytes]) -> bytes:
        text = match.group()
        try:
            address = ipaddress.IPv6Address(text.decode("ascii"))
        except ValueError:
            return text
        value = int(address) & keep
        if b"." in text:  # embedded IPv4 stays dotted (mmanon's embeddedIpv4)
            groups = [b"%x" % ((value >> (112 - 16 * i)) & 0xFFFF) for i in range(6)]
            tail = b".".join(b"%d" % octet for octet in (value & 0xFFFFFFFF).to_bytes(4, "big"))
            return b":".join(groups) + b":" + tail
        return b":".join(b"%x" % ((value >> (112 - 16 * i)) & 0xFFFF) for i in range(8))

    return mask


# Probes: what every match of the rule's pattern holds, searched in a whole
# raw batch. Each starts with a literal octet, which re scans for quickly.
_AWS_PROBE = re.compile(rb"A[KS]IA")
# An e-mail's domain has a dot: an RFC 5424 SD-ID ("origin@32473") does not wake the rule.
_EMAIL_PROBE = re.compile(rb"@[\w-]*\.")
_IPV4_PROBE = re.compile(rb"\.\d{1,3}\.\d")  # the 2nd and 3rd octets of a.b.c.d
# Every IPv6 address has "::" or 7 colons (6 before an embedded IPv4), so three
# full groups between colons: a time of day (12:34:56) does not wake the rule.
_IPV6_PROBE = re.compile(rb":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)")


def builtin_rule(
    name: str,
    *,
    ipv4_bits: int = DEFAULT_IPV4_BITS,
    ipv6_bits: int = DEFAULT_IPV6_BITS,
    structured_data: bool = False,
) -> Rule:
    """The built-in rule ``name`` (one of :data:`BUILTIN`); raises ValueError."""
    sd = structured_data
    if name == "card":
        markers: tuple[Needle, ...] = (b"9" * 13, b"9999 9999")  # "-" folds to " "
        return Rule(name, _CARD, _mask_card, markers, structured_data=sd)
    if name == "credentials":
        secret = re.compile(_SECRET_KEY + rb"\Z", re.IGNORECASE)
        markers = (b"passw", b"pwd", b"secret", b"token")
        userinfo = (b"@", b"://")  # scheme://user:password@host
        return Rule(name, _CREDENTIALS, _mask_credentials, markers, 0, sd, secret, (userinfo,))
    if name == "bearer":
        return Rule(name, _BEARER, rb"\1***", (b"bearer",), structured_data=sd)
    if name == "aws_key":
        return Rule(
            name, _AWS_KEY, rb"\1****************", structured_data=sd, probes=(_AWS_PROBE,)
        )
    if name == "email":
        return Rule(name, _EMAIL, rb"***@\1", structured_data=sd, probes=((b"@", _EMAIL_PROBE),))
    if name == "ipv4":
        if not 0 <= ipv4_bits <= 32:
            raise ValueError(f"ipv4 bits must be 0-32, not {ipv4_bits}")
        address = _ipv4_address_masker(ipv4_bits)
        return Rule(
            name,
            _IPV4,
            lambda match: address(match.group()),
            structured_data=sd,
            probes=(_IPV4_PROBE,),
            mask_address=address,
            at_once=_ipv4_at_once(ipv4_bits),
        )
    if name == "ipv6":
        if not 0 <= ipv6_bits <= 128:
            raise ValueError(f"ipv6 bits must be 0-128, not {ipv6_bits}")
        mask = _ipv6_masker(ipv6_bits)
        return Rule(name, _IPV6, mask, structured_data=sd, probes=(_IPV6_PROBE,))
    raise ValueError(f"unknown redaction rule {name!r} (built-in: {', '.join(BUILTIN)})")


# Rules a Redactor may run over a batch's MSGs joined by LF (Redactor._batch_bits).
_BATCH_RULES = ("ipv6", "ipv4")
_BATCH_PATTERNS = (_IPV4, _IPV6)

# The ipv4 rule over a whole batch (Redactor._redact_ipv4): what follows an
# address's first octet. A pattern led by a literal is scanned for at C speed
# (re looks for the "."), where _IPV4, led by a digit class, is tried at every
# digit (0.24 against 2.4 us for a 250-octet MSG with a sequence number and an
# address). The first octet is then read back from the dot (_ipv4_change).
_IPV4_TAIL = re.compile(rb"\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![\w]|\.[0-9])")
_DIGITS = b"0123456789"


# An RFC 5424 header without structured data, up to MSG (_msg_start's common
# case, as rfc5424.split_header cuts it, in one match instead of a split).
_HEAD_NO_SD = re.compile(
    rb"<(?:[0-9]|[1-9][0-9]|1[0-8][0-9]|19[01])>1 [^ ]*+ [^ ]*+ [^ ]*+ [^ ]*+ [^ ]*+ - "
)
# _ipv4_change's answer when there is nothing to change.
_NO_CHANGE = (0, b"")
# What may not come before an address's first octet (_IPV4's look-behind).
_WORD_OR_DOT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.")


# The ipv4 rule at C speed (Redactor._redact_ipv4_at_once): with a mask of
# 16 or 24 bits, re.sub writes zeros for the octets it masks with a literal
# replacement (a template with a group calls Python for every match, on
# Python 3.11), the octets it keeps are looked behind. Only where that is
# exactly what _IPV4 and the masker do: every message an RFC 5424 one without
# structured data and with nothing like an address in its header
# (_UNSAFE_LINE finds one that is not). Led by a literal, which re scans for
# in C.
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|[01][0-9][0-9]|[0-9][0-9]?)"
_END = rb"(?![\w]|\.[0-9])"
# An octet of 1, 2 or 3 digits up to 255 and its dot: what stands before the
# masked octets, after no word character or dot; one look-behind a width
# (re's look-behinds are of fixed width).
_KEPT_OCTET = (rb"[0-9]\.", rb"[0-9][0-9]\.", rb"(?:25[0-5]|2[0-4][0-9]|[01][0-9][0-9])\.")


def _kept_behind(kept: int) -> bytes:
    """What looks behind for ``kept`` octets and their dots, after no word
    character or dot: the last octet's width is found first (after a
    non-digit), then the one before it, so that an address tries at most 3 +
    3 look-behinds, not the 9 of every pair of widths in turn (callgrind,
    the bench's filtered payload: 7,570 -> 7,300 instructions a message)."""
    if kept == 1:
        return b"|".join(rb"(?<=(?<![\w.])" + octet + rb")" for octet in _KEPT_OCTET)
    return b"|".join(
        rb"(?<=(?<![0-9])"
        + last
        + rb")(?:"
        + b"|".join(rb"(?<=(?<![\w.])" + first + last + rb")" for first in _KEPT_OCTET)
        + rb")"
        for last in _KEPT_OCTET
    )


def _ipv4_at_once_pattern(kept: int) -> bytes:
    """After a dot, the masked octets of an address whose first ``kept`` (1
    or 2) octets stand before it (and whose masked octets are not all 0 already)."""
    masked = 4 - kept
    shape = rb"\.".join([rb"[0-9]{1,3}"] * masked) + _END
    ahead = rb"\.".join([_OCTET] * masked) + _END
    zeros = rb"\.".join([b"0"] * masked) + _END
    # The shape ahead is tried first, as simply as it can be written: at
    # most dots it fails at once (7,500 instructions a message against 9,500
    # with the octets' values there).
    return rb"\.(?=" + shape + rb")(?:" + _kept_behind(kept) + rb")(?!" + zeros + rb")" + ahead


# Bits -> the pattern and its literal replacement.
_IPV4_AT_ONCE = {
    16: (_ipv4_at_once_pattern(2), b".0.0"),
    24: (_ipv4_at_once_pattern(1), b".0.0.0"),
}
# After an LF: anything but an RFC 5424 header without structured data
# whose fields hold nothing like an address's last three octets. A field is
# a run of [^ ] (a one-octet test in re, where a class such as [^ \n.] calls
# a set test at each octet), checked by a look-ahead for such a dot
# (callgrind, the bench's filtered batches: 6,100 -> 4,700 instructions a
# message). A field may then run past the LF into the next message: the line
# has fewer than seven spaces, so MSG starts after its PRI (_msg_start) and
# all of it lies in the fields, which the look-ahead found free of
# addresses: nothing in it changes either way. The next message is checked
# at its own LF all the same.
_SAFE_FIELD = rb"(?![^ ]*\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9])[^ ]*+ "
_UNSAFE_LINE = re.compile(
    rb"\n(?!<(?:[0-9]|[1-9][0-9]|1[0-8][0-9]|19[01])>1 " + _SAFE_FIELD * 5 + rb"- )"
)


def _ipv4_at_once(bits: int) -> tuple[re.Pattern[bytes], bytes] | None:
    """The pattern and template that mask ``bits`` at C speed, if any."""
    found = _IPV4_AT_ONCE.get(bits)
    return None if found is None else (re.compile(found[0]), found[1])


def _ipv4_change(text: bytes, dot: int, mask: Callable[[bytes], bytes]) -> tuple[int, bytes]:
    """For _IPV4_TAIL's match at ``dot`` in ``text`` (which ends with it): the
    length of the first octet before the dot and the masked address, or
    _NO_CHANGE when there is no address (no first octet of 1-3 digits, or one after a
    word character or a dot) or the mask leaves it as it is."""
    before = text[max(0, dot - 4) : dot]
    digits = len(before) - len(before.rstrip(_DIGITS))
    start = dot - digits
    if not 1 <= digits <= 3 or (start and text[start - 1] in _WORD_OR_DOT):
        return _NO_CHANGE
    address = text[start:]
    masked = mask(address)
    return _NO_CHANGE if masked == address else (digits, masked)


# In the order a Redactor should apply them: ipv6 before ipv4 (an embedded
# IPv4 is the IPv6 rule's), credentials before email (user:pw@host).
BUILTIN = ("credentials", "bearer", "aws_key", "card", "email", "ipv6", "ipv4")


def compile_pattern(pattern: str) -> re.Pattern[bytes]:
    """``pattern`` (Python ``re`` syntax) compiled to search message bytes.

    A syntax error raises ValueError naming its position in ``pattern``,
    counted in characters from 1 (as relay check counts in a selector).
    """
    source = pattern.encode("utf-8")
    try:
        return re.compile(source)
    except re.error as exc:
        where = ""
        if exc.pos is not None:  # an offset in the UTF-8 bytes
            where = f" at position {len(source[: exc.pos].decode('utf-8', 'ignore')) + 1}"
        raise ValueError(f"bad regular expression{where}: {exc.msg}") from None


def custom_rule(
    name: str, pattern: str, replacement: str, *, structured_data: bool = False
) -> Rule:
    """A rule from config values: ``pattern`` (Python ``re`` syntax) -> ``replacement``.

    Raises :class:`ConfigError` naming the position in the pattern of a
    syntax error, or a replacement that refers to a group the pattern lacks;
    its ``key`` is the setting at fault, ``pattern`` or ``replace``.
    """
    try:
        compiled = compile_pattern(pattern)
    except ValueError as exc:
        raise ConfigError(str(exc), key="pattern") from None
    template = replacement.encode("utf-8")
    try:
        compiled.sub(template, b"")  # parses the template: a bad group reference raises
    except (re.error, IndexError) as exc:
        raise ConfigError(f"bad replacement: {exc}", key="replace") from None
    return Rule(name, compiled, template, structured_data=structured_data)


# --- where MSG starts ------------------------------------------------------------

# rfc3164's year inference needs a "now"; MSG's start does not depend on it
# except for Feb 29, which a leap year accepts.
_LEAP_YEAR = datetime(2000, 6, 1, tzinfo=UTC)


def _rfc5424_sd_start(raw: bytes, pos: int) -> int:
    """Index of STRUCTURED-DATA after ``VERSION SP`` at ``pos``, or -1."""
    for _ in range(5):  # TIMESTAMP HOSTNAME APP-NAME PROCID MSGID
        space = raw.find(b" ", pos)
        if space <= pos:
            return -1
        pos = space + 1
    return pos


def _sd_end(raw: bytes, pos: int, values: list[tuple[int, int, int, int]] | None) -> int:
    """Index just after STRUCTURED-DATA at ``pos``, or -1 if it is malformed.

    With ``values``, appends ``(name_start, name_end, value_start, value_end)``
    of each SD-PARAM (the value's raw, escaped octets).
    """
    if raw[pos : pos + 1] == b"-":
        return pos + 1
    if raw[pos : pos + 1] != b"[":
        return -1
    end = len(raw)
    while pos < end and raw[pos] == 0x5B:  # "["
        pos += 1
        while True:
            stop = pos
            while stop < end and raw[stop] not in b' ="]':
                stop += 1
            if stop >= end:
                return -1
            if raw[stop] == 0x5D:  # "]"
                pos = stop + 1
                break
            if raw[stop] == 0x20:
                pos = stop + 1
                continue
            if raw[stop : stop + 2] != b'="':
                return -1
            value = close = stop + 2
            while True:
                close = raw.find(b'"', close)
                if close == -1:
                    return -1
                backslashes = 0
                while raw[close - 1 - backslashes] == 0x5C:
                    backslashes += 1
                if backslashes % 2 == 0:
                    break
                close += 1
            if values is not None:
                values.append((pos, stop, value, close))
            pos = close + 1
    return pos


def _msg_start(raw: bytes) -> int:
    """Where MSG starts in ``raw`` (0 when there is no PRI)."""
    # The common case, RFC 5424 without structured data: MSG follows the
    # seventh space (one split, no PRI parse).
    parts = rfc5424.split_header(raw)
    if parts is not None and len(parts) == 8 and parts[6] == b"-":
        return len(raw) - len(parts[7])
    try:
        _, pos = parse_pri(raw)
    except ParseError:
        return 0
    if raw[pos : pos + 2] == b"1 ":
        sd = _rfc5424_sd_start(raw, pos + 2)
        end = _sd_end(raw, sd, None) if sd != -1 else -1
        if end == -1:
            return pos
        return end + 1 if raw[end : end + 1] == b" " else end
    return len(raw) - len(rfc3164.parse(raw, now=_LEAP_YEAR).msg)


def _unescape(value: bytes) -> bytes:
    return re.sub(rb'\\([\\"\]])', rb"\1", value)


def _escape(value: bytes) -> bytes:
    return value.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"]", b"\\]")


# --- the redactor ----------------------------------------------------------------


def _find(buffer: bytes, needle: Needle, pos: int) -> int:
    if isinstance(needle, tuple):
        gate, needle = needle
        if buffer.find(gate, pos) == -1:  # one octet: memchr, 50 times faster
            return -1
    if isinstance(needle, bytes):
        return buffer.find(needle, pos)
    match = needle.search(buffer, pos)
    return -1 if match is None else match.start()


# (gate, literal, pattern, needle, bit): a needle taken apart for Redactor._search.
_SearchItem = tuple[bytes, bytes, re.Pattern[bytes] | None, Needle, int]


def _search_item(needle: Needle, bit: int) -> _SearchItem:
    gate, inner = needle if isinstance(needle, tuple) else (b"", needle)
    if isinstance(inner, bytes):
        return gate, inner, None, needle, bit
    return gate, b"", inner, needle, bit


def _holds(text: bytes, needles: tuple[Needle, ...]) -> bool:
    return any(_find(text, needle, 0) != -1 for needle in needles)


class Redactor:
    """Apply ``rules`` in order to the MSG part of each message of a batch."""

    __slots__ = (
        "_batch_bits",
        "_folded",
        "_ipv4",
        "_ipv4_cache",
        "_per_message",
        "_raw",
        "_sd_rules",
        "counts",
        "rules",
    )

    def __init__(self, rules: Sequence[Rule]) -> None:
        if len({rule.name for rule in rules}) != len(rules):
            raise ValueError("redaction rule names must be unique")
        self.rules = tuple(rules)
        self.counts = dict.fromkeys((rule.name for rule in rules), 0)
        self._sd_rules = tuple(rule for rule in rules if rule.structured_data)
        # The built-in ipv4 rule, when it comes last and only on MSG, runs over
        # the whole batch after the others (_redact_ipv4): it wakes on nearly
        # every message of a log that names addresses, and waking costs more
        # than its own scan.
        last = self.rules[-1] if self.rules else None
        self._ipv4 = (
            last
            if last is not None
            and last.mask_address is not None
            and last.pattern is _IPV4
            and not last.structured_data
            else None
        )
        direct = self._ipv4
        # An address and the 4 octets before it -> its change (_redact_ipv4).
        self._ipv4_cache: dict[bytes, tuple[int, bytes]] = {}
        # What is searched in the whole batch, and the bit of the rule it wakes.
        self._raw = tuple(
            _search_item(needle, 1 << i)
            for i, rule in enumerate(self.rules)
            if rule is not direct
            for needle in rule.probes
        )
        self._folded = tuple(
            _search_item(needle, 1 << i)
            for i, rule in enumerate(self.rules)
            for needle in rule.markers
        )
        # Rules woken by looking at each message: colons, or a custom pattern.
        self._per_message = tuple(
            (rule, 1 << i)
            for i, rule in enumerate(self.rules)
            if rule.colons or not (rule.markers or rule.probes)
        )
        # The address rules run over the MSGs of a batch joined by LF, at once:
        # their patterns (digits, hex digits, dots and colons between
        # look-arounds that LF satisfies as the ends of a string do) can neither
        # match LF nor see past it. Not with structured_data.
        self._batch_bits = sum(
            1 << i
            for i, rule in enumerate(self.rules)
            if rule.name in _BATCH_RULES and rule.pattern in _BATCH_PATTERNS and rule is not direct
        )
        if self._sd_rules:
            self._batch_bits = 0

    def redact(self, messages: list[bytes]) -> list[bytes]:
        """The messages with every secret masked; counts added to ``counts``.

        Returns ``messages`` itself when nothing changed, and a clean message
        as the same object.
        """
        woken = self._wake(messages)
        if not woken:
            if self._ipv4 is None:
                return messages
            return self._redact_ipv4(messages, None) or messages
        out: list[bytes] | None = None
        batch_bits = self._batch_bits
        together: list[int] = []
        for index, bits in woken.items():
            if batch_bits and not bits & ~batch_bits:
                together.append(index)
                continue
            raw = messages[index]
            new = self._redact_message(raw, bits)
            if new is not raw:
                if out is None:
                    out = list(messages)
                out[index] = new
        if together:
            out = self._redact_together(messages, together, out)
        if self._ipv4 is not None:
            out = self._redact_ipv4(messages, out) or out
        return messages if out is None else out

    def _redact_ipv4_at_once(
        self, source: list[bytes], at_once: tuple[re.Pattern[bytes], bytes]
    ) -> list[bytes] | None:
        """``source`` redacted by one re.sub with a template (``source``
        itself if nothing changed), or None when the batch is not one it can
        do exactly (see _IPV4_AT_ONCE)."""
        joined = b"\n" + b"\n".join(source)
        if joined.count(b"\n") != len(source) or _UNSAFE_LINE.search(joined) is not None:
            return None
        pattern, template = at_once
        new, count = pattern.subn(template, joined)
        if not count:
            return source
        assert self._ipv4 is not None
        self.counts[self._ipv4.name] += count
        return new.split(b"\n")[1:]

    def _redact_ipv4(self, messages: list[bytes], out: list[bytes] | None) -> list[bytes] | None:
        """The ipv4 rule applied to MSG of every message of ``out`` (or of
        ``messages`` when None), exactly as _IPV4 would, at once; None when
        nothing changed, else the new list (``out`` itself when given).

        The batch, joined by LF, is scanned once (_IPV4_TAIL); a message
        holding a match has its MSG found (one match of _HEAD_NO_SD, or
        _msg_start), and a match counts only in MSG. What an address and the
        four octets before its first dot come to is remembered (_ipv4_cache):
        a log names the same addresses in the same words over and over. A
        message that holds LF is redacted on its own.
        """
        rule = self._ipv4
        assert rule is not None and rule.mask_address is not None
        source = messages if out is None else out
        if rule.at_once is not None:
            done = self._redact_ipv4_at_once(source, rule.at_once)
            if done is not None:
                if done is source:
                    return out
                if out is not None:
                    out[:] = done
                    return out
                return done
        joined = b"\n".join(source)
        scanned = source
        redo: dict[int, int] = {}  # index -> where MSG starts: done on its own
        if joined.count(b"\n") != len(source) - 1:
            scanned = list(source)
            for index, raw in enumerate(source):
                if b"\n" in raw:
                    scanned[index] = b""
                    redo[index] = _msg_start(raw)
            joined = b"\n".join(scanned)
        cache = self._ipv4_cache
        bounds: list[int] = []  # where each message ends in joined (its LF + 1)
        index = -1
        line = msg = next_line = 0  # where source[index], its MSG and the next start
        edits: list[tuple[int, int, int, bytes]] = []  # (index, start, end, masked) in the message
        for match in _IPV4_TAIL.finditer(joined):
            dot, end = match.span()
            if dot >= next_line:  # in a later message: which, and where its MSG starts
                if not bounds:
                    bounds = list(accumulate([len(m) + 1 for m in scanned]))
                index += 1
                if bounds[index] <= dot:  # not the next one (bisect costs ~2,000
                    index = bisect_right(bounds, dot, index)  # instructions, a step 100)
                line, next_line = bounds[index - 1] if index else 0, bounds[index]
                raw = source[index]
                head = _HEAD_NO_SD.match(raw)
                msg = line + (head.end() if head is not None else _msg_start(raw))
            if dot - 4 >= msg:
                key = joined[dot - 4 : end]
                found = cache.get(key)
                if found is None:
                    if len(cache) >= MASK_CACHE:
                        cache.clear()
                    found = cache[key] = _ipv4_change(key, 4, rule.mask_address)
            elif dot >= msg:  # an address at MSG's start: not remembered
                found = _ipv4_change(joined[msg:end], dot - msg, rule.mask_address)
            else:
                if end > msg:  # across MSG's start: this message on its own
                    redo[index] = msg - line
                continue
            digits, masked = found
            if digits:
                edits.append((index, dot - digits - line, end - line, masked))
        if not edits and not redo:
            return out
        result = list(messages) if out is None else out
        changed = False
        for index, start in redo.items():  # (rare: _apply counts its own)
            raw = source[index]
            tail = raw[start:]
            text = self._apply(rule, tail)
            if text is not tail:
                result[index] = raw[:start] + text
                changed = True
        if redo:
            edits = [edit for edit in edits if edit[0] not in redo]
        # Each edit into its message, the last first: the offsets of those
        # before it in the same message stay right.
        for index, start, end, masked in reversed(edits):
            raw = result[index]
            result[index] = raw[:start] + masked + raw[end:]
        self.counts[rule.name] += len(edits)
        changed = changed or bool(edits)
        return result if changed else out

    def _redact_together(
        self, messages: list[bytes], indices: list[int], out: list[bytes] | None
    ) -> list[bytes] | None:
        """The address rules over the MSGs of ``messages[indices]`` joined by LF:
        one regular expression pass for all of them (6.7 -> 1.6 us a message
        holding an address; see the module docstring)."""
        starts = [_msg_start(messages[i]) for i in indices]
        msgs = [messages[i][start:] for i, start in zip(indices, starts, strict=True)]
        joined = b"\n".join(msgs)
        if joined.count(b"\n") != len(msgs) - 1:  # a MSG holds LF: one at a time
            for index in indices:
                new = self._redact_message(messages[index], self._batch_bits)
                if new is not messages[index]:
                    out = list(messages) if out is None else out
                    out[index] = new
            return out
        changed = False
        for i, rule in enumerate(self.rules):
            if self._batch_bits >> i & 1:
                new_joined = self._apply(rule, joined)
                if new_joined is not joined:
                    joined, changed = new_joined, True
        if not changed:
            return out
        out = list(messages) if out is None else out
        for index, start, old, new in zip(indices, starts, msgs, joined.split(b"\n"), strict=True):
            if new != old:
                out[index] = messages[index][:start] + new
        return out

    def redact_one(self, raw: bytes) -> bytes:
        """One message, redacted (``raw`` itself when nothing matched)."""
        return self.redact([raw])[0]

    def _wake(self, messages: list[bytes]) -> dict[int, int]:
        """Index of each message that may hold a secret -> bits of the rules it wakes.

        The batch is joined (and folded) a chunk of :data:`CHUNK` octets at a
        time and each needle searched in the chunk from end to end; a hit
        wakes its rule for the message it falls in, and the search goes on
        from the next message. A needle that spans two messages wakes the
        first for nothing: a message is searched again on its own before a
        pattern runs.
        """
        woken: dict[int, int] = {}
        if len(messages) == 1 and (self._raw or self._folded):
            self._search_chunk(messages[0], [len(messages[0])], 0, 0, woken)
        elif self._raw or self._folded:
            ends = list(accumulate(map(len, messages)))
            first = 0
            while first < len(messages):
                base = ends[first - 1] if first else 0
                last = max(bisect_right(ends, base + CHUNK, first), first + 1)
                chunk = b"".join(messages[first:last])
                self._search_chunk(chunk, ends, base, first, woken)
                first = last
        for rule, bit in self._per_message:
            for index, raw in enumerate(messages):
                if (rule.colons and raw.count(b":") >= rule.colons) or (
                    not rule.colons and rule.pattern.search(raw) is not None
                ):
                    woken[index] = woken.get(index, 0) | bit
        return woken

    def _search_chunk(
        self, chunk: bytes, ends: list[int], base: int, first: int, woken: dict[int, int]
    ) -> None:
        if self._raw:
            self._search(chunk, self._raw, ends, base, first, woken)
        if self._folded:
            self._search(chunk.translate(FOLD), self._folded, ends, base, first, woken)

    @staticmethod
    def _search(
        chunk: bytes,
        needles: tuple[_SearchItem, ...],
        ends: list[int],
        base: int,
        first: int,
        woken: dict[int, int],
    ) -> None:
        """Wake rules for the messages of ``chunk`` (``messages[first:]``, at ``base``)."""
        # The first search of each needle is inlined: it is the one that
        # (nearly always) finds nothing, and a batch may be one message.
        for gate, literal, pattern, needle, bit in needles:
            if gate and gate not in chunk:
                continue
            if literal:
                at = chunk.find(literal)
            else:
                match = pattern.search(chunk)  # type: ignore[union-attr]
                at = -1 if match is None else match.start()
            while at != -1:
                index = bisect_right(ends, base + at, first)
                woken[index] = woken.get(index, 0) | bit
                at = _find(chunk, needle, ends[index] - base)

    def _redact_message(self, raw: bytes, bits: int) -> bytes:
        start = _msg_start(raw)
        head, msg = raw[:start], raw[start:]
        folded: bytes | None = None
        woken: list[Rule] = []
        for i, rule in enumerate(self.rules):
            if not bits >> i & 1:
                continue
            # A needle in the header woke the rule: is one in MSG? (Only a
            # rule with folded markers asks: a probe is a regular expression
            # about as costly as the rule's own, which finds nothing there
            # all the same: 8.4 -> 6.6 us a message for ipv4.)
            if rule.markers:
                if rule.markers and folded is None:
                    folded = msg.translate(FOLD)
                if not (
                    (rule.probes and _holds(msg, rule.probes))
                    or (folded is not None and _holds(folded, rule.markers))
                    or rule.colons
                ):
                    continue
            woken.append(rule)
        changed = False
        for rule in woken:
            new = self._apply(rule, msg)
            if new is not msg:
                msg, changed = new, True
        if self._sd_rules:
            new_head = self._redact_sd(head)
            if new_head is not head:
                head, changed = new_head, True
        if not changed:
            return raw
        return head + msg

    def _apply(self, rule: Rule, text: bytes) -> bytes:
        """``text`` with ``rule`` applied (itself if nothing changed); counts it.

        A replacement that writes the same octets (a card failing Luhn, an
        address already zeroed) is not a redaction and is not counted.
        """
        replace = rule.replace
        if callable(replace):
            changes = 0

            def counted(match: re.Match[bytes]) -> bytes:
                nonlocal changes
                new = replace(match)
                if new != match.group():
                    changes += 1
                return new

            new = rule.pattern.sub(counted, text)
            if not changes:
                return text
            self.counts[rule.name] += changes
            return new
        new, count = rule.pattern.subn(replace, text)
        if not count or new == text:
            return text
        self.counts[rule.name] += count
        return new

    def _redact_sd(self, head: bytes) -> bytes:
        try:
            _, pos = parse_pri(head)
        except ParseError:
            return head
        if head[pos : pos + 2] != b"1 ":
            return head
        sd = _rfc5424_sd_start(head, pos + 2)
        params: list[tuple[int, int, int, int]] = []
        if sd == -1 or _sd_end(head, sd, params) == -1 or not params:
            return head
        parts: list[bytes] = []
        last = 0
        for name_start, name_end, value_start, value_end in params:
            escaped = head[value_start:value_end]
            value = _unescape(escaped)
            new = self._redact_value(head[name_start:name_end], value)
            if new != value:
                parts += (head[last:value_start], _escape(new))
                last = value_end
        if not parts:
            return head
        parts.append(head[last:])
        return b"".join(parts)

    def _redact_value(self, name: bytes, value: bytes) -> bytes:
        for rule in self._sd_rules:
            if rule.secret_params is not None and rule.secret_params.match(name):
                if value != MASK:
                    self.counts[rule.name] += 1
                    value = MASK
                continue
            value = self._apply(rule, value)
        return value


def redactor(
    names: Iterable[str],
    *,
    ipv4_bits: int = DEFAULT_IPV4_BITS,
    ipv6_bits: int = DEFAULT_IPV6_BITS,
) -> Redactor:
    """A Redactor of built-in rules by name, in :data:`BUILTIN`'s order."""
    wanted = list(names)
    for name in wanted:
        if name not in BUILTIN:
            raise ValueError(f"unknown redaction rule {name!r} (built-in: {', '.join(BUILTIN)})")
    rules = [builtin_rule(n, ipv4_bits=ipv4_bits, ipv6_bits=ipv6_bits) for n in BUILTIN]
    return Redactor([rule for rule in rules if rule.name in wanted])
