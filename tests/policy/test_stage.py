"""relay/policy/stage.py with plain Batch values: which output takes which messages."""

from __future__ import annotations

import ipaddress
import re

import pytest

from relay.message import Batch
from relay.policy import stage as stage_module
from relay.policy.filter import Filter
from relay.policy.redact import Redactor, custom_rule
from relay.policy.selector import DEFAULT_PRI, PRI_COUNT, parse_selector
from relay.policy.stage import Stage, header_fields, pris
from relay.protocol.framing import encode_octet_counted

RECEIVED = 1_700_000_000.25


def message(
    pri: int, seq: int, *, host: str = "web1", app: str = "sshd", msgid: str = "-"
) -> bytes:
    return b"<%d>1 2024-05-06T12:34:56Z %s %s - %s - seq=%d" % (
        pri,
        host.encode(),
        app.encode(),
        msgid.encode(),
        seq,
    )


def batch(
    messages: list[bytes],
    *,
    peer: str = "127.0.0.2:514",
    input: str = "lan",
    octet_counted: bool = True,
) -> Batch:
    return Batch(
        messages,
        received=RECEIVED,
        peer=peer,
        input=input,
        octet_counted=encode_octet_counted(messages) if octet_counted else None,
    )


def selector(text: str) -> Filter:
    return Filter(selector=parse_selector(text))


def seqs(routed: Batch | None) -> list[int]:
    """The seq= numbers of a routed batch, in order; [] for None."""
    if routed is None:
        return []
    return [int(m.rpartition(b"seq=")[2]) for m in routed.messages]


def every_pri() -> Batch:
    """One message per PRI 0..191, its seq equal to its PRI."""
    return batch([message(p, p) for p in range(PRI_COUNT)])


# -- nothing configured ------------------------------------------------------


def test_no_filter_and_no_redaction_is_passthrough() -> None:
    assert Stage([Filter(), Filter()], [None, None]).passthrough
    assert Stage([selector("*.*")], [None]).passthrough  # "*.*" is no condition
    assert not Stage([Filter(), selector("mail.*")], [None, None]).passthrough
    assert not Stage([Filter(inputs=frozenset({"lan"}))], [None]).passthrough
    redactor = Redactor([custom_rule("pin", r"pin=\d+", "pin=*")])
    assert not Stage([Filter()], [redactor]).passthrough


def test_outputs_that_take_everything_take_the_batch_itself() -> None:
    b = every_pri()
    stage = Stage([Filter(), selector("*.*")], [None, None])
    routed = stage.route(b)
    assert routed[0] is b and routed[1] is b
    assert stage.counts == {"unrouted": 0}


def test_one_filter_and_redactor_per_output() -> None:
    with pytest.raises(ValueError, match="one filter and one redactor"):
        Stage([Filter(), Filter()], [None])


# -- selectors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["mail.*", "*.info;mail.none;authpriv.*", "kern.=warning", "*.!=debug", "*.none"]
)
def test_a_selector_keeps_what_it_selects(text: str) -> None:
    b = every_pri()
    (routed,) = Stage([selector(text)], [None]).route(b)
    table = parse_selector(text).table
    assert seqs(routed) == [p for p in range(PRI_COUNT) if table[p]]


def test_a_part_of_a_batch_is_a_new_batch_without_the_octet_counted_form() -> None:
    b = every_pri()
    (routed,) = Stage([selector("mail.*")], [None]).route(b)
    assert routed is not None and routed is not b
    assert seqs(routed) == list(range(16, 24))
    assert (routed.received, routed.peer, routed.input) == (RECEIVED, b.peer, b.input)
    assert routed.nbytes == sum(map(len, routed.messages))
    # Its frames are its own messages, not the whole batch as it came.
    assert routed.octet_counted() == encode_octet_counted(routed.messages)
    assert b.octet_counted() == encode_octet_counted(b.messages)  # the input's is untouched


def test_when_every_message_passes_the_batch_itself_goes_on() -> None:
    b = batch([message(13, 0), message(14, 1), message(11, 2)])  # user.notice, user.info, user.err
    routed = Stage([selector("user.*"), selector("*.info;mail.none")], [None, None]).route(b)
    assert routed[0] is b and routed[1] is b


def test_a_selector_taking_nothing_of_a_batch_gives_none() -> None:
    b = batch([message(13, 0), message(14, 1)])
    assert Stage([selector("mail.*")], [None]).route(b) == [None]


# Every message as parse_selector reads its PRI: a message without a valid PRI
# is user.notice, as rsyslog treats it.
ODD = [
    b"<13>",
    b"<0>x",
    b"<191>x",
    b"<192>x",
    b"<013>x",
    b"<00>x",
    b"<>x",
    b"<7",
    b"<12345>x",
    b" <16>x",
    b"16>x",
    b"",
    b"no pri at all",
    b"<-1>x",
    b"<+1>x",
    b"<1 >x",
]


@pytest.mark.parametrize("text", ["*.notice", "user.=notice", "kern.*", "mail.*", "local7.*"])
def test_a_message_without_a_valid_pri_is_user_notice(text: str) -> None:
    parsed = parse_selector(text)
    (routed,) = Stage([Filter(selector=parsed)], [None]).route(batch(ODD))
    assert (routed.messages if routed else []) == [m for m in ODD if parsed.matches(m)]


def test_pris_reads_the_pri_part_only() -> None:
    assert pris([b"<0>a", b"<191>b", b"<192>c", b"<013>d", b"x"]) == [
        0,
        191,
        DEFAULT_PRI,
        DEFAULT_PRI,
        DEFAULT_PRI,
    ]


# -- inputs and source: one test per batch -------------------------------------


NET_V4 = ipaddress.ip_network("127.0.0.0/30")
NET_V6 = ipaddress.ip_network("::1/128")


@pytest.mark.parametrize(
    ("peer", "input", "taken"),
    [
        ("127.0.0.2:514", "lan", [True, True, False, False]),
        ("127.0.0.9:514", "lan", [True, False, False, False]),
        ("127.0.0.2:514", "app", [False, True, False, False]),
        ("[::1]:514", "lan", [True, False, True, False]),
        ("[::ffff:127.0.0.2]:40000", "lan", [True, True, False, False]),  # IPv4-mapped
        ("[::ffff:10.0.0.1]:40000", "lan", [True, False, False, True]),
        ("10.1.2.3:514", "app", [False, False, False, True]),
        ("/dev/log", "lan", [True, False, False, False]),  # a unix socket: no address
        ("", "lan", [True, False, False, False]),
    ],
)
def test_inputs_and_source_are_tested_per_batch(peer: str, input: str, taken: list[bool]) -> None:
    filters = [
        Filter(inputs=frozenset({"lan"})),
        Filter(sources=(NET_V4,)),
        Filter(sources=(NET_V6,)),
        Filter(sources=(ipaddress.ip_network("10.0.0.0/8"),)),
    ]
    b = batch([message(13, 0), message(14, 1)], peer=peer, input=input)
    routed = Stage(filters, [None] * len(filters)).route(b)
    assert [r is b for r in routed] == taken
    assert all(r is None for r, t in zip(routed, taken, strict=True) if not t)


def test_a_batch_condition_and_a_selector_both_hold() -> None:
    f = Filter(selector=parse_selector("mail.*"), inputs=frozenset({"lan"}))
    stage = Stage([f], [None])
    assert seqs(stage.route(every_pri())[0]) == list(range(16, 24))
    assert stage.route(batch([message(16, 0)], input="app")) == [None]


# -- header fields: parsed once per message ------------------------------------


def fields_batch() -> Batch:
    return batch(
        [
            message(13, 0, host="WEB1", app="sshd", msgid="AUTH"),
            message(13, 1, host="web2", app="cron", msgid="-"),
            message(13, 2, host="web1", app="cron", msgid="AUTH"),
            b"no pri: no header fields",
            b"<13>Oct 11 22:14:15 web1 sshd[42]: seq=4",  # RFC 3164
        ]
    )


def test_hostname_app_name_and_msgid_conditions() -> None:
    filters = [
        Filter(hostnames=frozenset({"web1"})),  # the config lower-cases them
        Filter(app_names=frozenset({"cron"})),
        Filter(msgids=frozenset({"AUTH"})),
        Filter(hostnames=frozenset({"web1"}), app_names=frozenset({"sshd"})),
    ]
    routed = Stage(filters, [None] * len(filters)).route(fields_batch())
    assert [[m[-5:] for m in r.messages] if r else [] for r in routed] == [
        [b"seq=0", b"seq=2", b"seq=4"],
        [b"seq=1", b"seq=2"],
        [b"seq=0", b"seq=2"],
        [b"seq=0", b"seq=4"],
    ]


def test_header_fields_are_parsed_once_per_message_for_every_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []

    def counting(raw: bytes, received: float) -> stage_module.Fields:
        calls.append(raw)
        return header_fields(raw, received)

    monkeypatch.setattr(stage_module, "header_fields", counting)
    filters = [
        Filter(hostnames=frozenset({"web1"})),
        Filter(app_names=frozenset({"cron"})),
        Filter(msgids=frozenset({"AUTH"})),
        selector("*.*;mail.none"),
    ]
    b = fields_batch()
    stage = Stage(filters, [None] * len(filters))
    stage.route(b)
    assert calls == b.messages
    calls.clear()
    Stage([selector("mail.*"), Filter(contains=(b"x",))], [None, None]).route(b)
    assert calls == []  # a selector reads the PRI only


def test_header_fields() -> None:
    assert header_fields(message(13, 0, host="WEB1", msgid="ID47"), RECEIVED) == (
        "web1",
        "sshd",
        "ID47",
    )
    assert header_fields(message(13, 0, msgid="-"), RECEIVED) == ("web1", "sshd", "")
    assert header_fields(b"no pri", RECEIVED) is None


# -- contains and regex ----------------------------------------------------------


def test_contains_and_regex() -> None:
    b = batch([message(13, n) for n in range(12)])
    filters = [
        Filter(contains=(b"seq=1", b"seq=7")),  # either
        Filter(regex=re.compile(rb"seq=\d*[05]$")),
        Filter(contains=(b"seq=1",), regex=re.compile(rb"0$")),  # both
        Filter(selector=parse_selector("user.*"), contains=(b"seq=3",)),
    ]
    routed = Stage(filters, [None] * len(filters)).route(b)
    assert [seqs(r) for r in routed] == [[1, 7, 10, 11], [0, 5, 10], [10], [3]]


# -- unrouted ---------------------------------------------------------------


def test_unrouted_counts_the_messages_no_output_took() -> None:
    stage = Stage([selector("mail.*"), selector("mail.info"), selector("auth.*")], [None] * 3)
    stage.route(every_pri())
    # mail (8) and auth (8) are taken, mail.info twice but counted once.
    assert stage.counts == {"unrouted": PRI_COUNT - 16}
    stage.route(batch([message(16, 0), message(0, 1)]))  # mail.emerg taken, kern.emerg not
    assert stage.counts == {"unrouted": PRI_COUNT - 16 + 1}


def test_unrouted_counts_a_batch_no_output_takes() -> None:
    stage = Stage([Filter(inputs=frozenset({"lan"})), selector("mail.*")], [None, None])
    stage.route(batch([message(13, 0), message(16, 1)], input="lan"))
    assert stage.counts == {"unrouted": 0}
    stage.route(batch([message(13, 0), message(16, 1), message(14, 2)], input="app"))
    assert stage.counts == {"unrouted": 2}  # mail took seq 1


def test_unrouted_stays_zero_when_an_output_takes_everything() -> None:
    stage = Stage([selector("mail.*"), Filter(), Filter(contains=(b"nothing",))], [None] * 3)
    for _ in range(3):
        stage.route(every_pri())
    assert stage.counts == {"unrouted": 0}


# -- redaction ---------------------------------------------------------------


def test_redaction_comes_after_the_filter() -> None:
    pin = Redactor([custom_rule("pin", r"pin=\d+", "pin=****")])
    messages = [message(p, p) + b" pin=%d" % (1000 + p) for p in range(PRI_COUNT)]
    b = batch(messages)
    routed = Stage([selector("mail.*"), Filter()], [pin, None]).route(b)
    # Only what the filter kept is redacted (and counted).
    assert routed[0] is not None
    assert routed[0].messages == [message(p, p) + b" pin=****" for p in range(16, 24)]
    assert pin.counts == {"pin": 8}
    assert routed[0].octet_counted() == encode_octet_counted(routed[0].messages)
    # Another output takes the batch as it came.
    assert routed[1] is b and b.messages == messages


def test_a_redactor_that_changes_nothing_keeps_the_batch() -> None:
    pin = Redactor([custom_rule("pin", r"pin=\d+", "pin=****")])
    clean = every_pri()
    (routed,) = Stage([Filter()], [pin]).route(clean)
    assert routed is clean
    dirty = batch([message(13, 0) + b" pin=1234", message(13, 1)])
    (routed,) = Stage([Filter()], [pin]).route(dirty)
    assert routed is not None and routed is not dirty
    assert routed.messages == [message(13, 0) + b" pin=****", message(13, 1)]
    assert routed.octet_counted() == encode_octet_counted(routed.messages)
    assert (routed.received, routed.peer, routed.input) == (RECEIVED, dirty.peer, dirty.input)
