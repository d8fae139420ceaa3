"""Local files, differential against rsyslogd: the same messages, the same bytes.

One rsyslogd writes what it receives over UDP and TCP with its three stock
file templates (RSYSLOG_TraditionalFileFormat, RSYSLOG_FileFormat,
RSYSLOG_SyslogProtocol23Format), and one ``relay run`` writes the same with
``format = "traditional"``, ``"rsyslog"`` and ``"rfc5424"``. Both get every
message of ``CASES`` once over UDP, then (once those are written) once
octet-counted over TCP. The
files must be the same, line for line, except the timestamp of a message that
has none (the reception time differs): that field is masked, in the cases
marked so only. Both run with TZ set to a zone with a half-hour offset, so
that the offsets relay writes are checked too, and rsyslog with DNS off (its
HOSTNAME for a message without one is then the sender's address, as relay's).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.interop.peers import LOOPBACK, RelayProcess, Rsyslog, free_port
from tests.waiting import wait_until

# (message, whether rsyslog stamps it with the reception time)
CASES: list[tuple[bytes, bool]] = [
    (b"<13>Jan  5 10:11:12 myhost tag: hello world", False),
    (b"<13>Jan  5 10:11:12 myhost tag[123]: with pid", False),
    (b"<13>Jan  5 10:11:12 tag: no hostname", False),
    (b"<13>Jan  5 10:11:12 myhost tag:", False),
    (b"<13>Jan  5 10:11:12 myhost tag:  leading space", False),
    (b"<13>Jan  5 10:11:12 myhost tag:no space", False),
    (b"<13>Jan  5 10:11:12 myhost tag: tab\there\x01 and \x1b[0m", False),
    (b"<13>Jan  5 10:11:12 myhost tag: nul\x00inside", False),
    (b"<13>Jan  5 10:11:12 myhost tag: nul at the end\x00", False),
    (b"<13>Jan  5 10:11:12 myhost tag: lf\ninside", False),
    (b"<13>Jan  5 10:11:12 myhost tag: cr lf at the end\r\n", False),
    (b"<13>Jan  5 10:11:12 myhost tag: del\x7f", False),
    (b"<13>Jan  5 10:11:12 myhost tag: caf\xc3\xa9 \xe2\x82\xac \xe4\xb8\xad", False),
    (b"<13>Jan  5 10:11:12 myhost tag: invalid utf-8 \xff\xfe", False),
    (b"<165>Dec 31 23:59:59 my_host.ex-1 postfix/smtpd[99]: complex tag", False),
    (b"<13>Jan 05 10:11:12 myhost tag: zero-padded day", False),
    (b"<13>jan  5 1:2:3 myhost tag: lower case month, short time", False),
    (b"<13>Jan  5 10:11:12.123 myhost tag: fraction", False),
    (b"<13>Jan  5 2024 10:11:12 myhost tag: Cisco year", False),
    (b"<13>2024 Jan  5 10:11:12 myhost tag: year in front", False),
    (b"<13> Jan  5 10:11:12 myhost tag: space before the timestamp", False),
    (b"<13>2024-01-05T10:11:12.5+05:30 myhost tag: RFC 3339 in RFC 3164", False),
    (b"<13>Jan  5 10:11:12 myhost- tag: not a hostname", False),
    (b"<13>Jan  5 10:11:12 myhost: tag: not a hostname either", False),
    (b"<13>Jan  5 10:11:12 10.1.2.3 tag: address as hostname", False),
    (b"<13>Jan  5 10:11:12 myhost tag msg without colon", False),
    (b"<13>Jan  5 10:11:12 myhost [tag]: brackets", False),
    (b"<13>Jan  5 10:11:12 myhost tag[12]x: odd pid", False),
    (b"<13>Jan  5 10:11:12 myhost", False),
    (b"<13>Jan  5 10:11:12 myhost ", False),
    (b"<13>Jan  5 10:11:12", False),
    (b"<13>hello no header", True),
    (b"no pri at all", True),
    (b"<13>", True),
    (b"<999>Jan  5 10:11:12 myhost tag: PRI out of range", True),
    (b"<13>1 2024-01-05T10:11:12.123456+02:00 h5 app 42 ID7 - RFC 5424", False),
    (b'<13>1 2024-01-05T10:11:12Z h5 app - - [ex@1 a="b\\"c"] with SD', False),
    (b'<13>1 2024-01-05T10:11:12Z h5 app - - [a@1 x="1"][b@2 y="2"]', False),
    (b"<13>1 2024-01-05T10:11:12.1-05:30 h5 - 77 - - nil app", False),
    (b"<13>1 - - - - - -", True),
    (b"<13>1 2024-01-05T10:11:12Z h5 app - - - \xef\xbb\xbfBOM", False),
    (b"<13>1 2024-01-05T10:11:12Z h5 app - -  two spaces", False),
    (b"<13>1 2024-01-05T10:11:12Z h5 app - - - tab\there", False),
    (b"<13>1 not-a-timestamp h5 app - - - bad", True),
]
FORMATS = {
    "traditional": "RSYSLOG_TraditionalFileFormat",
    "rsyslog": "RSYSLOG_FileFormat",
    "rfc5424": "RSYSLOG_SyslogProtocol23Format",
}


def _mask(fmt: str, line: bytes) -> bytes:
    """``line`` with its timestamp field replaced."""
    if fmt == "traditional":
        return b"TIMESTAMP" + line[15:]
    if fmt == "rsyslog":
        return b"TIMESTAMP" + line[line.index(b" ") :]
    pri, _, rest = line.split(b" ", 2)
    return pri + b" TIMESTAMP " + rest


def _send(udp_port: int, tcp_port: int, paths: list[Path], what: str) -> None:
    """Every case over UDP, and once all are written, every case over TCP.

    The two inputs are read by different threads (rsyslog) or tasks (relay):
    sent back to back, their messages may interleave in the files.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for message, _ in CASES:
            sock.sendto(message, (LOOPBACK, udp_port))
    _wait_for(paths, len(CASES), f"{what}, UDP")
    with socket.create_connection((LOOPBACK, tcp_port)) as sock:
        sock.sendall(b"".join(b"%d %s" % (len(m), m) for m, _ in CASES))
    _wait_for(paths, 2 * len(CASES), f"{what}, TCP")


def _lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]


def _wait_for(paths: list[Path], count: int, what: str) -> None:
    wait_until(
        lambda: all(len(_lines(p)) >= count for p in paths),
        20,
        message=lambda: f"{what}: " + ", ".join(f"{p.name}={len(_lines(p))}" for p in paths),
    )


def _through_rsyslog(tmp_path: Path) -> Path:
    out = tmp_path / "rsyslog-out"
    out.mkdir()
    udp, tcp = free_port("udp"), free_port("tcp")
    actions = "\n".join(
        f'  action(type="omfile" file="{out}/{fmt}.log" template="{template}")'
        for fmt, template in FORMATS.items()
    )
    config = f"""\
global(net.enableDNS="off")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="{LOOPBACK}" port="{udp}" ruleset="files")
input(type="imtcp" address="{LOOPBACK}" port="{tcp}" ruleset="files")
ruleset(name="files") {{
{actions}
}}
"""
    with Rsyslog(tmp_path / "rsyslog", config) as rsyslog:
        rsyslog.wait_for_tcp(tcp)
        rsyslog.wait_for_udp(udp)
        _send(udp, tcp, [out / f"{fmt}.log" for fmt in FORMATS], "rsyslog")
    return out


def _through_relay(tmp_path: Path) -> Path:
    out = tmp_path / "relay-out"
    udp, tcp = free_port("udp"), free_port("tcp")
    outputs = "".join(
        f'[output.{fmt}]\nurl = "file://{out}/{fmt}.log"\nformat = "{fmt}"\n' for fmt in FORMATS
    )
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[input.udp]\nurl = "udp://{LOOPBACK}:{udp}"\n'
        f'[input.tcp]\nurl = "tcp://{LOOPBACK}:{tcp}"\n{outputs}'
    )
    with RelayProcess(["-c", str(config)], tmp_path / "relay") as relay:
        relay.wait_for_tcp(tcp)
        _send(udp, tcp, [out / f"{fmt}.log" for fmt in FORMATS], "relay")
        assert relay.terminate() == 0, relay.log_tail()
    return out


def test_files_are_what_rsyslog_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/St_Johns")  # -03:30 or -02:30
    theirs = _through_rsyslog(tmp_path)
    ours = _through_relay(tmp_path)
    stamped_now = [now for _, now in CASES] * 2
    differences = []
    for fmt in FORMATS:
        expected = _lines(theirs / f"{fmt}.log")
        got = _lines(ours / f"{fmt}.log")
        assert len(got) == len(expected) == len(stamped_now), fmt
        for index, (want, have, now) in enumerate(zip(expected, got, stamped_now, strict=True)):
            if now:
                want, have = _mask(fmt, want), _mask(fmt, have)
            if have != want:
                message = CASES[index % len(CASES)][0]
                differences.append(f"{fmt}: {message!r}\n  rsyslog {want!r}\n  relay   {have!r}")
    assert not differences, "\n".join(differences)
