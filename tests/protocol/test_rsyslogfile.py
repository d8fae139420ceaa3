"""relay/protocol/rsyslogfile.py: what the file formats write where a local
input stamped the reception time (the differential tests against rsyslogd are
tests/interop/test_file_rsyslog.py and test_debian_rsyslog.py)."""

from __future__ import annotations

from relay.protocol import rsyslogfile

RAW = b"<14>Dec  1 14:30:32 vm app[7]: text"


def reception(stamped: bool) -> rsyslogfile.Reception:
    return rsyslogfile.Reception.at((2026, 12, 1, 14, 30, 32), 914858, 3600, b"vm", stamped)


def test_a_stamped_timestamp_gets_the_reception_times_microseconds() -> None:
    """As rsyslog's imuxsock: the time of reception, to the microsecond."""
    stamped = reception(True)
    assert rsyslogfile.rsyslog(RAW, stamped) == (
        b"2026-12-01T14:30:32.914858+01:00 vm app[7]: text\n"
    )
    assert rsyslogfile.rfc5424(RAW, stamped) == (
        b"<14>1 2026-12-01T14:30:32.914858+01:00 vm app 7 - -  text\n"  # MSG keeps its space
    )
    assert rsyslogfile.traditional(RAW, stamped) == b"Dec  1 14:30:32 vm app[7]: text\n"


def test_a_timestamp_the_sender_wrote_stays_to_the_second() -> None:
    """A network message, or a local one whose time is not the reception's."""
    assert rsyslogfile.rsyslog(RAW, reception(False)) == (
        b"2026-12-01T14:30:32+01:00 vm app[7]: text\n"
    )
    other = b"<14>Dec  1 14:30:31 vm app[7]: text"
    assert rsyslogfile.rsyslog(other, reception(True)) == (
        b"2026-12-01T14:30:31+01:00 vm app[7]: text\n"
    )
