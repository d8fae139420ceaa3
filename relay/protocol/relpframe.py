"""RELP's wire format: frames, a sans-IO decoder for them, and the offers of ``open``.

The spec is rsyslog/librelp ``doc/relp.md`` (version 0.0.1, 2008). Where it is
silent or contradicts itself we do what librelp does on the wire
(``src/relpframe.c``), because rsyslog's imrelp/omrelp are the peers that
matter:

* A frame is ``TXNR SP COMMAND SP DATALEN [SP DATA] LF`` ("RELP FRAME");
  TXNR and DATALEN are 1-9 digits, COMMAND 1-32 letters. With DATALEN 0 the
  trailer follows DATALEN directly.
* TXNR 0 is reserved for hints (only ``serverclose`` exists); "the next TXNR
  [after 999,999,999] is 1".
* ``open`` carries offers (``relp_version=0``, ``commands=syslog``,
  ``relp_software=...``); its 200 rsp carries the offers the server accepts.
  librelp speaks ``relp_version=0`` (``RELP_CURR_PROTOCOL_VERSION``), not the
  spec's 1.

The session built on them (who sends what when, the ``rsp`` data) is
:mod:`relay.protocol.relp`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay import __version__
from relay.errors import LocalProtocolError, RemoteProtocolError

# librelp's RELP_DFLT_MAX_DATA_SIZE ("128K should be sufficient for
# everything"), which imrelp uses unless maxDataSize is set; the spec says "In
# relp version 1, it is always 128K". imrelp aborts the session on a bigger
# frame, so the client refuses to send one rather than wedge the session.
DEFAULT_MAX_DATA = 128 * 1024

MAX_TXNR = 999_999_999  # TXNR = 1*9DIGIT, "latched at 999,999,999"
RELP_VERSION = 0  # what librelp sends and accepts; see the module docstring
SOFTWARE = ("relay", __version__)  # relp_software: name, version[, URL]

NUMBER_DIGITS = 9  # NUMBER = 1*9DIGIT
_MAX_COMMAND = 32  # COMMAND = 1*32ALPHA
_HINTS = frozenset({"serverclose"})  # the only hint the spec defines


def next_txnr(txnr: int) -> int:
    """The TXNR after ``txnr``: "After that TXNR [999,999,999], the next TXNR is 1"."""
    return 1 if txnr >= MAX_TXNR else txnr + 1


class RelpProtocolError(RemoteProtocolError):
    """The peer broke RELP.

    ``rsp_code`` is the code to answer with; ``txnr`` the command to answer,
    or ``None`` when the frame cannot be trusted (then only close).
    """

    def __init__(self, message: str, *, rsp_code: int = 500, txnr: int | None = None) -> None:
        super().__init__(message)
        self.rsp_code = rsp_code
        self.txnr = txnr


# -- frames ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One RELP frame ("RELP FRAME")."""

    txnr: int
    command: str
    data: bytes = b""


def encode_frame(frame: Frame) -> bytes:
    """Serialise ``frame``; raise :class:`LocalProtocolError` if it cannot be sent."""
    command = frame.command
    if not (0 < len(command) <= _MAX_COMMAND and command.isascii() and command.isalpha()):
        raise LocalProtocolError(f"RELP command must be 1-32 ASCII letters: {command!r}")
    return encode_parts(frame.txnr, command.encode("ascii"), frame.data)


def encode_parts(txnr: int, command: bytes, data: bytes) -> bytes:
    """Serialise a frame from its parts, without :func:`encode_frame`'s check of ``command``.

    For the commands the sessions send, which are constants.
    """
    if not 0 <= txnr <= MAX_TXNR:
        raise LocalProtocolError(f"RELP txnr out of range: {txnr}")
    if len(data) > MAX_TXNR:
        raise LocalProtocolError("RELP data longer than 999,999,999 octets")
    if data:
        return b"%d %s %d %s\n" % (txnr, command, len(data), data)
    return b"%d %s 0\n" % (txnr, command)  # "if DATALEN is 0, no data is present"


def _field_end(buf: bytes, start: int, limit: int, stops: bytes, what: str) -> int:
    """Index of the byte ending the field at ``start``; -1 if more data is needed.

    The field is 1..``limit`` digits (or letters for the command) and ends at
    the first byte of ``stops``. Errors are found as soon as the offending
    byte is in ``buf``, so any split of the stream fails at the same frame.
    """
    window = start + limit + 1
    end = -1
    for stop in stops:
        found = buf.find(stop, start, window)
        if found >= 0 and (end < 0 or found < end):
            end = found
    field = buf[start:end] if end >= 0 else buf[start:window]
    valid = bytes.isalpha if what == "command" else bytes.isdigit  # ASCII only
    if field and not valid(field):
        bad = next(field[i : i + 1] for i in range(len(field)) if not valid(field[i : i + 1]))
        raise RelpProtocolError(f"invalid {what}: unexpected {bad!r}")
    if end < 0:
        if len(field) > limit:
            raise RelpProtocolError(f"{what} longer than {limit} characters")
        return -1
    if not field:
        raise RelpProtocolError(f"empty {what}")
    return end


class RelpDecoder:
    """Split a RELP byte stream into :class:`Frame` values.

    Feed every read to :meth:`receive_data` (``b""`` at end of stream); it
    returns the frames completed so far. A malformed frame raises
    :class:`RelpProtocolError`; if good frames precede it in the same call,
    they are returned first, the error is kept in :attr:`error` and raised by
    the next call. So the stream fed whole, byte by byte or in any split
    yields the same frames and then the same error.
    """

    def __init__(self, *, max_data: int = DEFAULT_MAX_DATA) -> None:
        if not 0 <= max_data <= MAX_TXNR:
            raise ValueError("max_data must be between 0 and 999,999,999")
        self.max_data = max_data
        #: the error found after the frames last returned, raised next call
        self.error: RelpProtocolError | None = None
        self._buf = b""
        self._eof = False

    def receive_data(self, data: bytes) -> list[Frame]:
        """Take the next bytes of the stream (``b""`` at EOF); return complete frames."""
        if self.error is not None:
            raise self.error
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data after end of stream")
            return []
        if not data:
            self._eof = True
            if self._buf:
                self.error = RelpProtocolError(
                    f"connection closed inside a frame ({len(self._buf)} octets of it)"
                )
                raise self.error
            return []
        buf = self._buf + data if self._buf else data
        frames: list[Frame] = []
        pos = 0
        try:
            while (parsed := self._parse(buf, pos)) is not None:
                frame, pos = parsed
                frames.append(frame)
        except RelpProtocolError as exc:
            self.error = exc
            self._buf = b""
            if not frames:
                raise
            return frames
        self._buf = buf[pos:]
        return frames

    def take_buffered(self) -> bytes:
        """Hand back the start of an unfinished frame, to be fed again in front
        of the bytes that follow it (a caller with a faster path of its own)."""
        buf, self._buf = self._buf, b""
        return buf

    def _parse(self, buf: bytes, pos: int) -> tuple[Frame, int] | None:
        # Fast path: a well-formed header of a frame with data, in three finds.
        sp1 = buf.find(b" ", pos, pos + NUMBER_DIGITS + 1)
        sp2 = buf.find(b" ", sp1 + 1, sp1 + _MAX_COMMAND + 2) if sp1 > pos else -1
        sp3 = buf.find(b" ", sp2 + 1, sp2 + NUMBER_DIGITS + 2) if sp2 > 0 else -1
        if sp3 > sp2 + 1:
            txnr, command, datalen = buf[pos:sp1], buf[sp1 + 1 : sp2], buf[sp2 + 1 : sp3]
            if txnr.isdigit() and command.isalpha() and datalen.isdigit():
                return self._body(buf, int(txnr), command.decode(), int(datalen), sp3)
        # Anything else, field by field: need more data, DATALEN 0, or an error.
        if pos >= len(buf):
            return None
        txnr_end = _field_end(buf, pos, NUMBER_DIGITS, b" ", "txnr")
        if txnr_end < 0:
            return None
        cmd_end = _field_end(buf, txnr_end + 1, _MAX_COMMAND, b" ", "command")
        if cmd_end < 0:
            return None
        len_end = _field_end(buf, cmd_end + 1, NUMBER_DIGITS, b" \n", "datalen")
        if len_end < 0:
            return None
        command_s = buf[txnr_end + 1 : cmd_end].decode()
        return self._body(
            buf, int(buf[pos:txnr_end]), command_s, int(buf[cmd_end + 1 : len_end]), len_end
        )

    def _body(
        self, buf: bytes, txnr: int, command: str, datalen: int, end: int
    ) -> tuple[Frame, int] | None:
        """The frame whose header ends at ``end`` (the SP or LF after DATALEN)."""
        if (txnr == 0) != (command in _HINTS):
            # "TXNR 0 is reserved for hint commands", which are "always
            # transmitted with a txnr of zero"
            raise RelpProtocolError(f"txnr {txnr} not allowed for {command!r}")
        if datalen > self.max_data:
            raise RelpProtocolError(f"frame of {datalen} octets exceeds {self.max_data}")
        if datalen == 0:
            if buf[end] != 0x0A:
                raise RelpProtocolError("missing trailer after DATALEN 0")
            return Frame(txnr, command), end + 1
        if buf[end] != 0x20:
            raise RelpProtocolError(f"frame ends before its {datalen} octets of data")
        start = end + 1
        end = start + datalen
        if end >= len(buf):
            return None
        if buf[end] != 0x0A:
            raise RelpProtocolError(f"missing trailer after {datalen} octets of data")
        return Frame(txnr, command, buf[start:end]), end + 1


# -- offers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Offers:
    """Offers of an ``open`` or its ``rsp``: ``name=value,value`` lines ("OFFERS")."""

    items: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def get(self, name: str) -> tuple[str, ...] | None:
        """The values of offer ``name``, or ``None`` if it was not offered."""
        for key, values in self.items:
            if key == name:
                return values
        return None


def parse_offers(data: bytes) -> Offers:
    """Parse offers; empty lines and empty values are skipped, as librelp does."""
    items = []
    for line in data.split(b"\n"):
        if line:
            name, _, values = line.partition(b"=")
            kept = tuple(v.decode("latin-1") for v in values.split(b",") if v)
            items.append((name.decode("latin-1"), kept))
    return Offers(tuple(items))


def encode_offers(offers: Offers) -> bytes:
    """Serialise offers; names and values must not contain ``=``, ``,`` or LF."""
    lines = []
    for name, values in offers.items:
        if not name or any(c in name for c in "=\n") or any(c in v for v in values for c in ",\n"):
            raise LocalProtocolError(f"offer cannot be encoded: {name!r}={values!r}")
        lines.append(f"{name}={','.join(values)}".encode("latin-1"))
    return b"\n".join(lines)


def our_offers(software: Sequence[str] = SOFTWARE) -> Offers:
    """The offers relay sends in ``open`` and in its answer to one."""
    return Offers(
        (
            ("relp_version", (str(RELP_VERSION),)),
            ("commands", ("syslog",)),
            ("relp_software", tuple(software)),
        )
    )


def relp_version(offers: Offers) -> int | None:
    """The offered relp_version, or None if missing or not a number."""
    values = offers.get("relp_version")
    if values and values[0].isascii() and values[0].isdigit():
        return int(values[0])
    return None


def offers_syslog(offers: Offers) -> bool:
    """Whether ``commands`` offers ``syslog``."""
    return "syslog" in (offers.get("commands") or ())
