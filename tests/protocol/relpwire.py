"""What the tests of relay/protocol/relpframe.py and relp.py share: librelp's
``open`` as captured on loopback, and a decoder run over a whole wire."""

from __future__ import annotations

from relay.errors import RemoteProtocolError
from relay.protocol.relpframe import Frame, RelpDecoder, RelpProtocolError

LIBRELP_OPEN = (
    b"1 open 86 relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\n"
    b"commands=syslog\n"
)


def decode(wire: bytes, chunk: int | None = None, **kw: int) -> tuple[list[Frame], str | None]:
    """Feed ``wire`` whole or ``chunk`` bytes at a time, then EOF: (frames, error)."""
    decoder = RelpDecoder(**kw)
    frames: list[Frame] = []
    step = chunk or max(1, len(wire))
    try:
        for i in range(0, len(wire), step):
            frames += decoder.receive_data(wire[i : i + step])
        frames += decoder.receive_data(b"")
    except RelpProtocolError as exc:
        assert isinstance(exc, RemoteProtocolError)
        assert (exc.rsp_code, exc.txnr) == (500, None)  # framing errors: answer nothing, close
        return frames, str(exc)
    return frames, None
