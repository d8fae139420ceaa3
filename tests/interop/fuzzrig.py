"""The input fuzzer's rig: one relay with every kind of input, good clients
streaming numbered messages the whole time, and a player for fuzz cases.

:class:`Rig` starts ``python -m relay run -c CONFIG`` (tests.interop.peers'
RelayProcess) with inputs tcp (framing auto), tcp-octet, tcp-lf, tls,
relp, relp-tls, tcp-proxy (PROXY protocol, trusting loopback), udp and
unix, all writing to the relay's own file://
output (octet-counted, so no message's bytes can fake another's frame).
Good clients stream on their own connections to tcp (LF), tcp-octet, tls,
relp, relp-tls and tcp-proxy (after a PROXY header), each message tagged
with a token drawn at start that no fuzz case contains
(``G<token><stream> seq=N``), so the output file says which good messages
arrived and how often, whatever the fuzz cases wrote.

:meth:`Rig.play` plays one :class:`~tests.interop.fuzzcases.Case` over a
real socket; :meth:`Rig.faults` says what is wrong since the last look
(the relay exited, or logged a traceback); :meth:`Rig.check_progress` that
every good stream's latest message arrived; :meth:`Rig.finish` stops the
good clients and checks each of their messages arrived exactly once, then
stops the relay with SIGTERM and checks it exits 0 without a traceback.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relay.protocol.proxy import encode_v2
from relay.protocol.relp import Acked, Closed, Opened, RelpClient, State
from tests.certs import CertFiles, CertificateAuthority
from tests.interop.fuzzcases import (
    MAX_MESSAGE,
    PROXY_TARGETS,
    RELP_TARGETS,
    TLS_TARGETS,
    Case,
)
from tests.interop.peers import LOOPBACK, RelayProcess, free_port, udp_port_bound
from tests.waiting import wait_until

RELAY_NAME = "relay.fuzz.example"
CLIENT_NAME = "client.fuzz.example"

# Good clients: messages per write and the pause between writes (pacing, not
# synchronisation): about 250 messages/s each, a steady stream that costs the
# shared 2-core machine little.
GOOD_BATCH = 5
GOOD_PAUSE = 0.02
# How long a case may take to play, at most (a relay that never answers).
IO_TIMEOUT = 2.0
# Cases that end "keep" leave their connection open; at most this many stay
# open (through the final SIGTERM, so the stop meets half-read sessions).
KEEP_OPEN = 20


@dataclass
class Pki:
    ca: CertificateAuthority
    relay: CertFiles
    client: CertFiles
    stranger: CertFiles

    @classmethod
    def create(cls, directory: Path) -> Pki:
        ca = CertificateAuthority.create(directory / "pki")
        other = CertificateAuthority.create(directory / "pki-other", "Other CA")
        return cls(ca, ca.issue(RELAY_NAME), ca.issue(CLIENT_NAME), other.issue(CLIENT_NAME))

    def context(self, cert: CertFiles | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.relay.ca)
        ctx.check_hostname = False
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        return ctx


def relay_config(directory: Path, ports: dict[str, int], unix_path: Path, pki: Pki) -> Path:
    r = pki.relay
    scheme = {"tls": "tls", "relp": "relp", "relp-tls": "relp+tls", "udp": "udp"}
    inputs = []
    for name, port in ports.items():
        lines = [f"[input.{name}]", f'url = "{scheme.get(name, "tcp")}://{LOOPBACK}:{port}"']
        lines.append(f"max_message_size = {MAX_MESSAGE}")
        if name in TLS_TARGETS:
            lines.append('tls = "listener"')
        if name == "tcp-octet":
            lines.append('framing = "octet-counting"')
        if name == "tcp-lf":
            lines += ['framing = "non-transparent"', 'oversize = "drop"']
        if name in PROXY_TARGETS:
            lines += ["proxy_protocol = true", f'proxy_trusted = ["{LOOPBACK}"]']
        inputs.append("\n".join(lines))
    path = directory / "relay.toml"
    path.write_text(
        f"""\
[relay]
state_dir = "{directory / "state"}"
stop_timeout = 10

[tls.listener]
cert = "{r.cert}"
key = "{r.key}"
ca = "{r.ca}"
permitted_peers = ["{CLIENT_NAME}"]

{chr(10).join(inputs)}

[input.unix]
url = "unix://{unix_path}"
max_message_size = {MAX_MESSAGE}

[output.out]
url = "file://{directory / "out.log"}"
format = "octet-counted"
"""
    )
    return path


# -- the output file -------------------------------------------------------------


class Collector:
    """Counts the good messages in the relay's output file, reading it once."""

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self._pattern = re.compile(rb"G" + token.encode() + rb"([a-z]+) seq=(\d+) ")
        self._offset = 0
        self.seen: dict[str, collections.Counter[int]] = collections.defaultdict(
            collections.Counter
        )

    def update(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        last = 0
        for match in self._pattern.finditer(data):
            self.seen[match[1].decode()][int(match[2])] += 1
            last = match.end()
        # The file may end inside a message; read its last bytes again next time.
        self._offset += max(last, len(data) - 200)

    def has(self, stream: str, seq: int) -> bool:
        self.update()
        return seq in self.seen[stream]


# -- good clients ------------------------------------------------------------------


class GoodClient(threading.Thread):
    """Streams numbered messages on one connection until stopped; ``done`` is
    how many the relay took for certain (written for TCP, acknowledged for RELP)."""

    def __init__(self, stream: str, token: str, connect: socket.socket) -> None:
        super().__init__(name=f"good-{stream}", daemon=True)
        self.stream = stream
        self.token = token
        self.sock = connect
        self.done = 0
        self.error: str | None = None
        self.stopping = threading.Event()

    def message(self, seq: int) -> bytes:
        return b"<13>1 2026-01-01T00:00:00Z fuzz good - - - G%s%s seq=%d ." % (
            self.token.encode(),
            self.stream.encode(),
            seq,
        )

    def run(self) -> None:
        try:
            self.stream_messages()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def stream_messages(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 20.0) -> str | None:
        """Stop, finish the session cleanly, and return what went wrong, if anything."""
        self.stopping.set()
        self.join(timeout)
        if self.is_alive():
            return f"good client {self.stream} did not finish within {timeout}s"
        return self.error


class GoodTcp(GoodClient):
    def __init__(self, stream: str, token: str, sock: socket.socket, octet: bool) -> None:
        super().__init__(stream, token, sock)
        self.octet = octet

    def stream_messages(self) -> None:
        seq = 0
        while not self.stopping.wait(GOOD_PAUSE):
            batch = [self.message(n) for n in range(seq, seq + GOOD_BATCH)]
            frames = [b"%d %s" % (len(m), m) if self.octet else m + b"\n" for m in batch]
            self.sock.sendall(b"".join(frames))
            seq += GOOD_BATCH
            self.done = seq
        # A clean end: the relay closes once it read everything (at EOF).
        if isinstance(self.sock, ssl.SSLSocket):
            self.sock = self.sock.unwrap()
        self.sock.shutdown(socket.SHUT_WR)
        self.sock.settimeout(10)
        while self.sock.recv(4096):
            pass
        self.sock.close()


class GoodRelp(GoodClient):
    """A RELP client (relay's own sans-IO RelpClient) keeping to its window."""

    def stream_messages(self) -> None:
        client = RelpClient(window=64)
        self.sock.settimeout(10)
        self.sock.sendall(client.open())
        self._until(client, lambda: client.state is State.OPEN)
        seq = 0
        while not self.stopping.wait(GOOD_PAUSE):
            data, txnrs = client.send([self.message(n) for n in range(seq, seq + GOOD_BATCH)])
            self.sock.sendall(data)
            seq += len(txnrs)
            self._until(client, lambda: not client.unacked())
        self.sock.sendall(client.close())
        self._until(client, lambda: client.state is State.CLOSED)
        self.sock.close()

    def _until(self, client: RelpClient, done: Callable[[], bool]) -> None:
        while not done():
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("relay closed the good RELP session")
            for ev in client.receive_data(data):
                if isinstance(ev, Acked):
                    self.done += len(ev.txnrs)
                elif not isinstance(ev, Opened | Closed):
                    raise AssertionError(f"unexpected {ev!r}")


# -- the rig -----------------------------------------------------------------------------


class Rig:
    """One relay with every input, good clients, and a fuzz case player."""

    def __init__(self, directory: Path, pki: Pki | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = pki or Pki.create(self.directory)
        names = ("tcp", "tcp-octet", "tcp-lf", "tls", "relp", "relp-tls", "tcp-proxy")
        self.ports = {name: free_port() for name in names}
        self.ports["udp"] = free_port("udp")
        self.unix_path = self.directory / "log.sock"
        self.token = os.urandom(4).hex()
        config = relay_config(self.directory, self.ports, self.unix_path, self.pki)
        self.relay = RelayProcess(["-c", str(config)], self.directory / "relay")
        self.collector = Collector(self.directory / "out.log", self.token)
        self.good: list[GoodClient] = []
        self._kept: list[socket.socket] = []  # connections of cases that ended "keep"
        self._log_seen = 0
        self.contexts = {
            "session": self.pki.context(self.pki.client),
            "no-cert": self.pki.context(None),
            "stranger": self.pki.context(self.pki.stranger),
        }

    # -- lifecycle

    def start(self, good: bool = True) -> Rig:
        self.relay.start()
        tcp = [p for n, p in self.ports.items() if n != "udp"]
        self.relay.wait_for_tcp(*tcp)
        wait_until(
            lambda: udp_port_bound(self.ports["udp"]) and self.unix_path.exists(),
            10,
            message=lambda: f"relay did not bind udp and unix; log:\n{self.relay.log_tail()}",
        )
        if good:
            self.start_good()
        return self

    def start_good(self) -> None:
        ctx = self.contexts["session"]
        self.good = [
            GoodTcp("tcp", self.token, self._connect("tcp"), octet=False),
            GoodTcp("octet", self.token, self._connect("tcp-octet"), octet=True),
            GoodTcp("tls", self.token, ctx.wrap_socket(self._connect("tls")), octet=True),
            GoodRelp("relp", self.token, self._connect("relp")),
            GoodRelp("relptls", self.token, ctx.wrap_socket(self._connect("relp-tls"))),
            GoodTcp("proxy", self.token, self._proxied("tcp-proxy"), octet=True),
        ]
        for client in self.good:
            client.start()

    def _proxied(self, target: str) -> socket.socket:
        """A connection that has sent its PROXY header, as a balancer's would."""
        sock = self._connect(target)
        sock.sendall(encode_v2(("192.0.2.1", 40000), (LOOPBACK, self.ports[target])))
        return sock

    def _connect(self, target: str) -> socket.socket:
        return socket.create_connection((LOOPBACK, self.ports[target]), timeout=10)

    def kill(self) -> None:
        """After a fault: end the relay and the good clients, checking nothing."""
        if self.relay.process is not None and self.relay.running():
            self.relay.kill()
        self._close_kept()
        for client in self.good:
            client.stopping.set()
            with contextlib.suppress(OSError):
                client.sock.close()
            client.join(5)

    # -- checks

    def probe(self, timeout: float = 5.0) -> str | None:
        """A RELP open and close on the relp input: proof that the relay's event
        loop runs and its inputs serve (it reads the case's bytes before ours,
        so a case that stops the relay fails the probe right after it)."""
        client = RelpClient(window=1)
        try:
            with socket.create_connection((LOOPBACK, self.ports["relp"]), timeout) as sock:
                sock.sendall(client.open())
                wire = b""
                while client.state is not State.OPEN:
                    data = sock.recv(4096)
                    wire += data
                    events = client.receive_data(data)
                    if not data or any(not isinstance(e, Opened) for e in events):
                        return f"the relay answered a RELP open with {wire!r}"
                sock.sendall(client.close())
                while _state(client) is not State.CLOSED:
                    data = sock.recv(4096)
                    client.receive_data(data)
                    if not data:
                        return "the relay closed a RELP session before answering its close"
        except OSError as exc:
            return f"the relay did not answer a RELP open and close: {exc}"
        return None

    def faults(self, probe: bool = True) -> list[str]:
        """What went wrong since the last call: the relay exited, stopped serving
        (:meth:`probe`), or logged a traceback."""
        found = []
        failed = self.probe() if probe and self.relay.running() else None
        if failed:
            # It may be on its way out: wait for its last words.
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not self.relay.running(), 15)
            if self.relay.running():
                found.append(f"{failed}; log tail:\n{self.relay.log_tail(8)}")
        log = self.relay.log()
        new, self._log_seen = log[self._log_seen :], len(log)
        if "Traceback" in new:
            found.append("traceback in the relay's log:\n" + new[new.index("Traceback") :][-3000:])
        if not self.relay.running():
            status = self.relay.process.poll() if self.relay.process else None
            found.append(f"relay exited with status {status}; log tail:\n{self.relay.log_tail(8)}")
        return found

    def check_progress(self, timeout: float = 15.0) -> list[str]:
        """Every good client's latest message arrives within ``timeout``."""
        problems = []
        for client in self.good:
            if client.error:
                problems.append(f"good client {client.stream} failed: {client.error}")
                continue
            last = client.done - 1
            if last < 0:
                continue
            try:
                wait_until(functools.partial(self.collector.has, client.stream, last), timeout)
            except AssertionError:
                problems.append(
                    f"good stream {client.stream}: seq={last} did not arrive within {timeout}s"
                )
        return problems

    def finish(self) -> list[str]:
        """Stop the good clients; every message of theirs arrived once; then SIGTERM:
        the relay exits 0 and its log has no traceback. Returns what is wrong."""
        problems = []
        for client in self.good:
            error = client.stop()
            if error:
                problems.append(f"good client {client.stream}: {error}")
        for client in self.good:
            want = set(range(client.done))

            def arrived(c: GoodClient = client, w: set[int] = want) -> bool:
                self.collector.update()
                return w <= set(self.collector.seen[c.stream])

            with contextlib.suppress(AssertionError):
                wait_until(arrived, 20)
            seen = self.collector.seen[client.stream]
            missing = sorted(want - set(seen))
            twice = sorted(n for n, k in seen.items() if k > 1)
            extra = sorted(set(seen) - want)
            if missing or twice or extra:
                problems.append(
                    f"good stream {client.stream}: {client.done} sent; missing {missing[:20]}"
                    f" ({len(missing)}), twice {twice[:20]} ({len(twice)}), unsent {extra[:20]}"
                )
        if self.relay.running():
            status = self.relay.terminate(timeout=30)
            if status != 0:
                problems.append(f"relay exited {status} on SIGTERM; log:\n{self.relay.log_tail()}")
        self._close_kept()
        problems += [
            f for f in self.faults(probe=False) if not f.startswith("relay exited with status 0")
        ]
        return problems

    def _close_kept(self) -> None:
        for sock in self._kept:
            sock.close()
        self._kept = []

    def good_counts(self) -> dict[str, int]:
        return {c.stream: c.done for c in self.good}

    # -- playing cases

    def play(self, case: Case) -> None:
        """Play ``case`` against the relay; whatever the relay does to the
        connection (refuse, reset, close) is not an error here."""
        if case.target == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for gram in case.chunks:
                    with contextlib.suppress(OSError):
                        sock.sendto(gram, (LOOPBACK, self.ports["udp"]))
            return
        if case.target == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                for gram in case.chunks:
                    with contextlib.suppress(OSError):
                        sock.sendto(gram, str(self.unix_path))
            return
        try:
            sock = self._connect(case.target)
        except OSError:
            return  # refused: whether the relay is alive is checked apart
        sock.settimeout(IO_TIMEOUT)
        to_close: socket.socket | None = sock
        try:
            if case.target in TLS_TARGETS:
                self._play_tls(sock, case)
            else:
                for chunk in case.chunks:
                    sock.sendall(chunk)
                    if case.target in RELP_TARGETS:
                        _drain(sock)
            if case.end == "keep":
                self._kept.append(sock)
                to_close = self._kept.pop(0) if len(self._kept) > KEEP_OPEN else None
            else:
                _end(sock, case.end)
        except OSError:
            pass
        finally:
            if to_close is not None:
                to_close.close()

    def _play_tls(self, sock: socket.socket, case: Case) -> None:
        mode = case.tls_mode
        if mode == "raw":
            for chunk in case.chunks:
                sock.sendall(chunk)
            return
        ctx = self.contexts.get(mode, self.contexts["session"])
        tls = _MemoryTls(sock, ctx)
        if mode == "hello":
            sock.sendall(case.chunks[0])
            hello = tls.client_hello()
            sock.sendall(hello if case.hello_cut is None else hello[: case.hello_cut])
            for chunk in case.chunks[1:]:
                sock.sendall(chunk)
            return
        if not tls.handshake():
            return
        chunks = case.chunks[:-1] if mode == "session+raw" else case.chunks
        for chunk in chunks:
            tls.send(chunk)
            if case.target in RELP_TARGETS:
                _drain(sock)
        if mode == "session+raw":
            sock.sendall(case.chunks[-1])


class _MemoryTls:
    """A TLS client over a blocking socket through memory BIOs, so that raw
    bytes can go between TLS records and the ClientHello can be cut."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def client_hello(self) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.do_handshake()
        return self.outgoing.read()

    def handshake(self) -> bool:
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                return True
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if not data:
                    return False
                self.incoming.write(data)
            except ssl.SSLError:
                self._flush()
                return False

    def send(self, data: bytes) -> None:
        with contextlib.suppress(ssl.SSLError):
            self.obj.write(data)
        self._flush()


def _drain(sock: socket.socket) -> None:
    """Read what the relay answered so far, without waiting."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # with a timeout, recv() polls first, even with MSG_DONTWAIT
    try:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
    finally:
        sock.settimeout(timeout)


def _state(client: RelpClient) -> State:
    """``client.state`` read anew (mypy keeps it narrowed by the loop before)."""
    return client.state


def _end(sock: socket.socket, end: str) -> None:
    if end == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return
    if end == "half-close":
        sock.shutdown(socket.SHUT_WR)
        _read_until_closed(sock, IO_TIMEOUT)
    elif end == "wait":
        _read_until_closed(sock, 0.3)


def _read_until_closed(sock: socket.socket, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with contextlib.suppress(OSError):
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                return
