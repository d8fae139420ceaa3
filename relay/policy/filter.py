"""Which messages an output takes: an rsyslog selector plus property conditions.

A :class:`Filter` is a frozen value the config is made of (``filter``,
``inputs`` and ``[output.NAME.match]`` in relay.toml). Every condition that is
set must hold; within one condition, any of its values may match. The
conditions cost what they look at, cheapest first:

* ``inputs`` and ``source`` (address or network) are properties of the whole
  batch: one test per batch.
* ``pid``, ``uid``, ``gid`` and ``process`` are the sender's credentials as the
  kernel reported them to a local socket input (``Batch.creds``): one test per
  batch too. The process name (``/proc/PID/comm``) is read only when a
  ``process`` condition asks, through the lookup the stage is given (cached
  by the caller: this module does no I/O). A batch from any other input has
  no credentials and matches none of them.
* ``selector`` needs the PRI: a scan of the first five bytes per message (a
  message without a valid PRI is user.notice, as rsyslog treats it).
* ``contains`` is a substring search per message, ``regex`` a regular
  expression search (``re.search`` on the bytes; about 0.3-1 µs for a 300-byte
  message and a simple pattern, more for a pattern that backtracks).
* ``hostname``, ``app_name`` and ``msgid`` need the header parsed: once per
  message, shared by every output that asks (RFC 5424 and RFC 3164 are read;
  a message that parses as neither has no such fields and does not match).

The decisions are made by the processing stage (``policy/stage.py``); this
module only holds the values and their one-per-batch tests.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable

from relay.policy.selector import Selector

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A process's name (/proc/PID/comm) by pid; None when it cannot be read.
ProcessName = Callable[[int], str | None]


@dataclasses.dataclass(frozen=True, slots=True)
class Filter:
    selector: Selector | None = None
    inputs: frozenset[str] | None = None  # None: every input
    sources: tuple[Network, ...] = ()
    hostnames: frozenset[str] = frozenset()  # lower case: host names are case-insensitive
    app_names: frozenset[str] = frozenset()
    msgids: frozenset[str] = frozenset()
    contains: tuple[bytes, ...] = ()
    regex: re.Pattern[bytes] | None = None
    pids: frozenset[int] = frozenset()
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    processes: frozenset[str] = frozenset()

    @property
    def takes_everything(self) -> bool:
        """No condition at all: the output takes every message of every input."""
        return (
            (self.selector is None or self.selector.matches_everything)
            and self.inputs is None
            and not self.sources
            and not self.by_creds
            and not self.per_message_fields
            and not self.contains
            and self.regex is None
        )

    @property
    def per_message_fields(self) -> bool:
        """Whether a condition needs the parsed header of each message."""
        return bool(self.hostnames or self.app_names or self.msgids)

    @property
    def per_message(self) -> bool:
        """Whether any condition looks at each message (not only the batch)."""
        return (
            (self.selector is not None and not self.selector.matches_everything)
            or self.per_message_fields
            or bool(self.contains)
            or self.regex is not None
        )

    def takes_batch_from(self, input_name: str, peer: str) -> bool:
        """The per-batch conditions: the input's name and the sender's address."""
        if self.inputs is not None and input_name not in self.inputs:
            return False
        if self.sources:
            address = peer_address(peer)
            if address is None:
                return False
            return any(address in network for network in self.sources)
        return True

    @property
    def by_creds(self) -> bool:
        """Whether a condition reads the sender's credentials (``Batch.creds``)."""
        return bool(self.pids or self.uids or self.gids or self.processes)

    def takes_creds(self, creds: tuple[int, int, int] | None, process_name: ProcessName) -> bool:
        """The credential conditions, for a batch whose sender the kernel named."""
        if creds is None:
            return False
        pid, uid, gid = creds
        if (
            (self.pids and pid not in self.pids)
            or (self.uids and uid not in self.uids)
            or (self.gids and gid not in self.gids)
        ):
            return False
        return not self.processes or process_name(pid) in self.processes


def peer_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a batch's ``peer`` (``host:port``, ``[v6]:port``), or None."""
    host = peer.rpartition(":")[0] if ":" in peer else peer
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_host(peer: str) -> str:
    """A batch's ``peer`` without its port: the key of a per-source rate limit."""
    if peer.startswith("["):
        return peer[1:].partition("]")[0]
    if peer.count(":") == 1:
        return peer.partition(":")[0]
    return peer
