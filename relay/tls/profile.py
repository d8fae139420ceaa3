"""A TLS profile: the settings of a listener or a target, checked as values.

:class:`TlsProfile` is what a ``[tls.NAME]`` table becomes; building one
checks its values (versions, permitted-peer entries), never its files: those
are read by whoever starts TLS (:mod:`relay.tls.context`) and by ``relay
check``. No I/O here, so the config may import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import re
from pathlib import Path

from relay.errors import ConfigError

# Rotation tooling renews at 30 days left (Let's Encrypt's default), so a warning
# from then on gives the operator time while renewal still has a chance to run.
DEFAULT_EXPIRY_WARNING_DAYS = 30

# RFC 5425 §4.2 requires TLS 1.2 support; older versions are broken (RFC 8996).
TLS_VERSIONS = ("1.2", "1.3")


# -- the profile ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TlsProfile:
    """The TLS settings of a listener or a target.

    ``ca`` is the CA bundle peers' certificates must chain to (None: the
    system's store, for targets). ``permitted_peers`` is an allow-list checked
    after the handshake: each entry is a ``sha256:AB:CD:...`` (or bare hex)
    fingerprint of the peer's certificate, an IP address, or a host name,
    optionally ``*.domain`` for exactly one more label (RFC 6125 §6.4.3),
    matched case-insensitively against the certificate's subjectAltName
    (its CN only when it has no DNS name). On a listener a non-empty list
    implies asking for a client certificate; on a target it replaces the
    host name check (rsyslog's ``x509/name`` semantics, where the target is
    often an address and the certificate names a host).

    ``verify = False`` (targets only) accepts any server certificate; it is
    logged once as a warning. A fingerprint in ``permitted_peers`` still pins
    the peer then (rsyslog's ``x509/fingerprint`` with a self-signed peer).
    ``ciphers`` is an OpenSSL cipher list for TLS 1.2; TLS 1.3 keeps OpenSSL's
    suites (Python's ssl cannot set them).
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    min_version: str = "1.2"
    require_client_cert: bool = False
    permitted_peers: tuple[str, ...] = ()
    verify: bool = True
    ciphers: str | None = None
    expiry_warning_days: int = DEFAULT_EXPIRY_WARNING_DAYS

    def __post_init__(self) -> None:
        if self.min_version not in TLS_VERSIONS:
            raise ConfigError(
                f'must be "1.2" or "1.3", not {self.min_version!r}', key="min_version"
            )
        for entry in self.permitted_peers:
            _parse_permitted(entry)
        if self.key is not None and self.cert is None:
            raise ConfigError("a key needs its cert", key="cert")
        if self.expiry_warning_days < 0:
            raise ConfigError("must be 0 or more", key="expiry_warning_days")
        if self.ciphers is not None and not self.ciphers.strip():
            raise ConfigError(
                "must not be empty (leave it out for OpenSSL's default)", key="ciphers"
            )


# -- permitted peers --------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HOST = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*")


@dataclasses.dataclass(frozen=True, slots=True)
class _Permitted:
    kind: str  # "sha256", "ip", "name" or "wildcard" (value is then the parent domain)
    value: str
    text: str


@functools.lru_cache(maxsize=1024)  # checked on every connection
def _parse_permitted(entry: str) -> _Permitted:
    text = entry.strip().lower().rstrip(".")
    digits = text.removeprefix("sha256:").replace(":", "")
    if text.startswith("sha256:") or (_HEX64.fullmatch(digits) and len(text) in (64, 95)):
        if not _HEX64.fullmatch(digits):
            raise ConfigError(
                f"{entry!r}: a sha256 fingerprint has 64 hex digits", key="permitted_peers"
            )
        return _Permitted("sha256", digits, "sha256:" + bytes.fromhex(digits).hex(":").upper())
    with contextlib.suppress(ValueError):
        return _Permitted("ip", str(ipaddress.ip_address(text)), entry)
    if not _HOST.fullmatch(text):
        raise ConfigError(
            f"{entry!r} is neither a host name (optionally *.domain) nor a sha256:... fingerprint",
            key="permitted_peers",
        )
    if text.startswith("*."):
        return _Permitted("wildcard", text[2:], entry)
    return _Permitted("name", text, entry)
